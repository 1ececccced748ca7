#!/usr/bin/env bash
# Run the workbook on a CUDA GPU with real Stable Diffusion weights (needs the Hugging Face Hub).
# Same checks as CI (nbval), different models. By hand: bash scripts/gpu_notebooks.sh
# Models: SDCOURSE_MODEL (default sd15) for chapters 1-3, 5, 6; chapter 4 adds the inpainting,
# depth and x4-upscaler models. Set SDCOURSE_MODEL=mini to check the CUDA code paths offline.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: use scripts/test.sh')"
pip install -q -e ".[train,notebooks,cuda]"
export SDCOURSE_MODEL="${SDCOURSE_MODEL:-sd15}"
if [ "$SDCOURSE_MODEL" != "mini" ]; then
  export SDCOURSE_INPAINT_MODEL="${SDCOURSE_INPAINT_MODEL:-sd15-inpaint}"
  export SDCOURSE_DEPTH_MODEL="${SDCOURSE_DEPTH_MODEL:-sd2-depth}"
  export SDCOURSE_UPSCALE_MODEL="${SDCOURSE_UPSCALE_MODEL:-x4-upscaler}"
fi
exec python -m pytest notebooks --nbval-lax -p no:cacheprovider "$@"
