"""The real CLIP tokenizer, shipped inside the package so that it works offline.

Stable Diffusion 1.x and 2.x tokenize prompts with CLIP's byte-level BPE (49 408 tokens,
prompts padded or cut to 77). The vocabulary files in `assets/mini-sd/tokenizer/` (mini-SD's
tokenizer folder) were converted from the copy bundled in open-clip-torch by
`scripts/convert_clip_vocab.py`.
"""

from pathlib import Path

from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).parent / "assets" / "mini-sd" / "tokenizer"


def load_tokenizer() -> CLIPTokenizer:
    """Return SD's CLIP tokenizer ("a photo of a cat" -> 49406 320 1125 539 320 2368 49407)."""
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
