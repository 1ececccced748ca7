"""Fixtures shared by the test files."""

import pytest

from sdcourse.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    """A tiny random-weight text-to-image pipeline, one per test module (tests may swap its
    scheduler or attention processors), its progress bar silenced."""
    pipe = tiny_pipeline("text2img")
    pipe.set_progress_bar_config(disable=True)
    return pipe
