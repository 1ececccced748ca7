"""Convert the CLIP BPE vocabulary bundled in open-clip-torch into CLIPTokenizer files.

open-clip-torch ships `bpe_simple_vocab_16e6.txt.gz`, the byte-level BPE merges that the
original CLIP (and therefore Stable Diffusion) uses. transformers' `CLIPTokenizer` wants
the same data as `vocab.json` + `merges.txt`. This script writes those two files into
`sdcourse/assets/mini-sd/tokenizer/` so that sdcourse never needs open_clip (or the hub) at run time.

    pip install --no-deps open-clip-torch
    python scripts/convert_clip_vocab.py
"""

import gzip
import importlib.util
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "sdcourse" / "assets" / "mini-sd" / "tokenizer"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges; 49408 tokens in all


def bytes_to_unicode():
    """CLIP's reversible byte -> printable unicode table (same as GPT-2)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def main():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise SystemExit("open-clip-torch is not installed: pip install --no-deps open-clip-torch")
    bpe_path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]

    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(OUT / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main()
