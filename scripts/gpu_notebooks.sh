#!/usr/bin/env bash
# Run the workbook on a CUDA GPU with real Stable Diffusion weights (needs the Hugging Face Hub).
# Same checks as CI (nbval), different models. By hand: bash scripts/gpu_notebooks.sh
# Models: SDCOURSE_MODEL (default sd15) for chapters 1-3, 5, 6; chapter 4 adds the inpainting,
# depth and x4-upscaler models. Set SDCOURSE_MODEL=mini to check the CUDA code paths offline, or
# use scripts/gpu_rehearsal.sh for the real architectures with random weights (no downloads).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: use scripts/test.sh')"
pip install -q -e ".[train,notebooks,photos,cuda]"
export SDCOURSE_MODEL="${SDCOURSE_MODEL:-sd15}"
# Chapter 4's other tasks load the family's models by themselves (sd15: sd15-inpaint, sd2-depth,
# x4-upscaler; sd21-base: sd2-inpaint, ...); SDCOURSE_INPAINT_MODEL / _DEPTH_ / _UPSCALE_ override one.
exec python -m pytest notebooks --nbval-lax -p no:cacheprovider "$@"
