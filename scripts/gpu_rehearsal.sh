#!/usr/bin/env bash
# The T4 rehearsal on any CUDA GPU, offline: every notebook under nbval with the real architectures and
# random weights (load_pipeline("random-sd15")), fp16, each notebook's kernel capped at 15 GiB of the
# device (a T4's usable memory); writes benchmarks/results/gpu_rehearsal.json (status, peak allocated and
# reserved memory, wall time per notebook). Extra arguments go to benchmarks/gpu_rehearsal.py, e.g.
# --model random-sd21-base, --notebooks notebooks/04_extra_conditioning.ipynb, --cap-gib 15.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pip install -q -e ".[train,notebooks,photos,cuda]"   # a torch already there stays; bitsandbytes for chapter 5's 8-bit Adam
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: the rehearsal needs one')"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec python benchmarks/gpu_rehearsal.py "$@"
