"""sdcourse: helpers for the Stable Diffusion course workbook."""

import logging

__version__ = "0.1.0"


class _TorchvisionFallbackNotice(logging.Filter):
    """Drop transformers' notice that image processors fall back to PIL without torchvision.

    The CPU install deliberately has no torchvision (PyPI's builds are CUDA builds that
    break transformers there); the PIL processors are what we want, so the notice is noise.
    """

    def filter(self, record):
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackNotice())

from .models import load_pipeline  # noqa: E402  (after the filter, which must precede transformers)

__all__ = ["load_pipeline"]
