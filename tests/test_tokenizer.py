"""The shipped CLIP tokenizer gives Stable Diffusion's token ids, offline."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from sdcourse.tokenizer import TOKENIZER_DIR, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_known_ids(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_vocabulary_size_and_specials(tokenizer):
    assert len(tokenizer) == 49408
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407
    assert tokenizer.model_max_length == 77


def test_padding_and_truncation_to_77(tokenizer):
    short = tokenizer("a red circle", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(short) == 77 and short[:5] == [49406, 320, 736, 7117, 49407]
    assert set(short[5:]) == {tokenizer.pad_token_id}
    long = tokenizer("circle " * 100, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[-1] == 49407


def test_rare_identifier_is_one_token_and_pieces_decode(tokenizer):
    assert tokenizer.tokenize("sks") == ["sks</w>"]
    assert tokenizer.tokenize("zigzag") == ["zig", "zag</w>"]
    assert tokenizer.decode(tokenizer("a red circle").input_ids, skip_special_tokens=True) == "a red circle"


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open-clip-torch not installed")
def test_shipped_files_match_open_clip_vocabulary():
    """Regenerating from open-clip-torch's bpe file gives exactly the shipped files."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "convert_clip_vocab.py"))
    bpe = Path(importlib.util.find_spec("open_clip").origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")[1 : script["NUM_MERGES"] + 1]
    shipped_merges = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert shipped_merges == lines
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["<|startoftext|>"] == 49406 and vocab["".join(lines[0].split())] == 512
