"""sdcourse: helpers for the Stable Diffusion course workbook."""

__version__ = "0.1.0"
