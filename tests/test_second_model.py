"""Model independence: every notebook under nbval on a second model, tiny-random-sd2 (random weights
shaped like SD 2: ×8 VAE, 128 px, "!" padding), against the same stored outputs as on mini-SD.

A checked cell (`# NBVAL_CHECK_OUTPUT`) that prints the same for both prints something that holds for
every model, which is what lets the GPU runner check the same cells on real SD. Takes minutes: marked
`long` and `second_model`; CI runs it as a step of its own (`bash scripts/test.sh -m second_model`).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.long
@pytest.mark.second_model
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_passes_nbval_on_tiny_random_sd2(notebook):
    env = dict(os.environ, SDCOURSE_MODEL="tiny-random-sd2", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               SDCOURSE_DB_STEPS="20")  # chapter 5's training steps: no checked cell depends on them
    for name in ("SDCOURSE_INPAINT_MODEL", "SDCOURSE_DEPTH_MODEL", "SDCOURSE_UPSCALE_MODEL"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(notebook), "--nbval-lax", "-p", "no:cacheprovider", "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-6000:]
