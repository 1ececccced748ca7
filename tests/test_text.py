"""Tests for sdcourse.text: tokens table, embeddings, embedding swaps, textual inversion."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sdcourse import text as T
from sdcourse.models import mini_available
from sdcourse.testing import real_tokenizer, tiny_pipeline

PROMPT = "a red circle on a blue background"
SQUARE_PROMPT = "a red square on a blue background"


def encode_ids(pipe, prompt: str) -> torch.Tensor:
    """The reference: the text encoder run on the prompt's ids, as pipelines do."""
    with torch.no_grad():
        return pipe.text_encoder(T.prompt_input_ids(pipe.tokenizer, prompt))[0]


def generate(pipe, prompt=None, prompt_embeds=None, seed: int = 0) -> np.ndarray:
    return pipe(
        prompt,
        prompt_embeds=prompt_embeds,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images[0]


# --- tokens table ------------------------------------------------------------------------------


def test_tokens_table_labels_every_slot(pipe):
    table = T.tokens_table(pipe.tokenizer, "a photo of a cat")
    assert len(table) == 77
    assert [row.position for row in table] == list(range(77))
    assert table.ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert [row.kind for row in table[:7]] == ["start", "word", "word", "word", "word", "word", "end"]
    assert [row.piece for row in table.kinds("word")] == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    assert not table.truncated


def test_sd1_padding_repeats_the_end_token_and_sd2_pads_with_exclamation_marks(pipe):
    sd1 = T.tokens_table(pipe.tokenizer, "a photo of a cat")
    pads = sd1.kinds("pad")
    assert len(pads) == 70
    assert {row.id for row in pads} == {sd1.kinds("end")[0].id} == {49407}
    sd2 = T.tokens_table(real_tokenizer("sd21"), "a photo of a cat")
    assert sd2.ids[:7] == sd1.ids[:7]
    assert {row.id for row in sd2.kinds("pad")} == {0}
    assert {row.piece for row in sd2.kinds("pad")} == {"!"}


def test_tokens_table_max_length_and_truncation(pipe):
    short = T.tokens_table(pipe.tokenizer, PROMPT, max_length=12)
    assert len(short) == 12 and short.kinds("end")[0].position == 8
    long_prompt = " ".join(["circle"] * 100)
    long = T.tokens_table(pipe.tokenizer, long_prompt)
    assert long.truncated and len(long) == 77
    assert long[76].kind == "end" and not long.kinds("pad")
    assert len(long.kinds("word")) == 75
    with pytest.raises(ValueError, match="max_length=1"):
        T.tokens_table(pipe.tokenizer, PROMPT, max_length=1)
    with pytest.raises(TypeError, match="prompt must be a str"):
        T.tokens_table(pipe.tokenizer, ["a", "list"])


def test_tokens_table_repr_is_a_short_readable_table(pipe):
    text = repr(T.tokens_table(pipe.tokenizer, PROMPT))
    lines = text.splitlines()
    assert "9 of 77 slots used" in lines[0]
    assert lines[1].split() == ["pos", "id", "piece", "kind"]
    assert any(line.split() == ["3", "7117", "circle</w>", "word"] for line in lines)
    assert lines[-1].strip() == "… 66 more pad rows (id 49407)"
    assert len(lines) == 2 + 9 + 2 + 1  # header, used slots, two pad rows, summary
    assert "TRUNCATED" in T.format_tokens_table(T.tokens_table(pipe.tokenizer, "circle " * 100))


# --- embeddings --------------------------------------------------------------------------------


def test_token_and_position_embeddings(pipe):
    ids = T.prompt_input_ids(pipe.tokenizer, PROMPT)
    tokens, positions = T.token_and_position_embeddings(pipe.text_encoder, ids)
    hidden = pipe.text_encoder.config.hidden_size
    assert tokens.shape == (1, 77, hidden) and positions.shape == (1, 77, hidden)
    table = pipe.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(tokens[0, 3], table[7117])  # "circle"
    # Position embeddings do not depend on the prompt.
    _, other_positions = T.token_and_position_embeddings(pipe.text_encoder, T.prompt_input_ids(pipe.tokenizer, "x"))
    torch.testing.assert_close(positions, other_positions)


def test_encode_from_embeddings_reproduces_the_text_encoder(pipe):
    ids = torch.cat([T.prompt_input_ids(pipe.tokenizer, p) for p in (PROMPT, "a small green triangle at the top")])
    tokens, positions = T.token_and_position_embeddings(pipe.text_encoder, ids)
    with torch.no_grad():
        recombined = T.encode_from_embeddings(pipe.text_encoder, tokens + positions)
        reference = pipe.text_encoder(ids)[0]
    assert recombined.shape == (2, 77, pipe.text_encoder.config.hidden_size)
    torch.testing.assert_close(recombined, reference, atol=1e-5, rtol=1e-5)


def test_encode_from_embeddings_is_causal(pipe):
    ids = T.prompt_input_ids(pipe.tokenizer, PROMPT)
    tokens, positions = T.token_and_position_embeddings(pipe.text_encoder, ids)
    changed = tokens.clone()
    changed[0, 5] += 1.0
    with torch.no_grad():
        before = T.encode_from_embeddings(pipe.text_encoder, tokens + positions)
        after = T.encode_from_embeddings(pipe.text_encoder, changed + positions)
    torch.testing.assert_close(after[0, :5], before[0, :5])  # earlier slots cannot see slot 5
    assert not torch.allclose(after[0, 5:], before[0, 5:])


@pytest.mark.slow
def test_encode_from_embeddings_on_real_sd15_text_encoder():
    from sdcourse.testing import real_text_encoder

    text_encoder = real_text_encoder("sd15")
    ids = T.prompt_input_ids(real_tokenizer("sd15"), "a photo of an astronaut riding a horse on mars")
    tokens, positions = T.token_and_position_embeddings(text_encoder, ids)
    with torch.no_grad():
        recombined = T.encode_from_embeddings(text_encoder, tokens + positions)
        reference = text_encoder(ids)[0]
    assert recombined.shape == (1, 77, 768)
    torch.testing.assert_close(recombined, reference, atol=1e-5, rtol=1e-5)


# --- swapping and mixing token embeddings -------------------------------------------------------


def test_swap_equals_encoding_the_edited_prompt(pipe):
    swapped = T.swap_token_embedding(pipe, PROMPT, "circle", "square")
    assert swapped.shape == (1, 77, pipe.text_encoder.config.hidden_size)
    torch.testing.assert_close(swapped, encode_ids(pipe, SQUARE_PROMPT), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(T.swap_token_embedding(pipe, PROMPT, "circle", "circle"), encode_ids(pipe, PROMPT))
    # Every occurrence is replaced.
    twice = T.swap_token_embedding(pipe, "a circle and a circle", "circle", "square")
    torch.testing.assert_close(twice, encode_ids(pipe, "a square and a square"), atol=1e-5, rtol=1e-5)


def test_swap_with_a_vector(pipe):
    square = pipe.text_encoder.get_input_embeddings().weight[3999]
    torch.testing.assert_close(
        T.swap_token_embedding(pipe, PROMPT, "circle", square),
        T.swap_token_embedding(pipe, PROMPT, "circle", "square"),
    )


def test_swap_errors_name_the_word(pipe):
    with pytest.raises(ValueError, match=r"word='dog' is not in the prompt.*'red', 'circle'"):
        T.swap_token_embedding(pipe, PROMPT, "dog", "square")
    assert len(T.word_token_ids(pipe.tokenizer, "axolotl")) == 4
    with pytest.raises(ValueError, match=r"word='circle' is 1 token\(s\) but replacement='axolotl' is 4"):
        T.swap_token_embedding(pipe, PROMPT, "circle", "axolotl")
    with pytest.raises(ValueError, match="gives no tokens"):
        T.swap_token_embedding(pipe, PROMPT, " ", "square")


def test_mix_token_embeddings(pipe):
    torch.testing.assert_close(T.mix_token_embeddings(pipe, PROMPT, "circle", "square", 0.0), encode_ids(pipe, PROMPT))
    torch.testing.assert_close(
        T.mix_token_embeddings(pipe, PROMPT, "circle", "square", 1.0),
        encode_ids(pipe, SQUARE_PROMPT),
        atol=1e-5,
        rtol=1e-5,
    )
    table = pipe.text_encoder.get_input_embeddings().weight
    half = T.mix_token_embeddings(pipe, PROMPT, "circle", "square")
    torch.testing.assert_close(half, T.swap_token_embedding(pipe, PROMPT, "circle", (table[7117] + table[3999]) / 2))
    assert not torch.allclose(half, encode_ids(pipe, PROMPT))
    assert not torch.allclose(half, encode_ids(pipe, SQUARE_PROMPT))
    with pytest.raises(ValueError, match="other_word='axolotl' is 4"):
        T.mix_token_embeddings(pipe, PROMPT, "circle", "axolotl")


def test_swapped_embeddings_drive_the_pipeline(pipe):
    swapped = T.swap_token_embedding(pipe, PROMPT, "circle", "square")
    from_embeds = generate(pipe, prompt_embeds=swapped)
    np.testing.assert_allclose(from_embeds, generate(pipe, SQUARE_PROMPT), atol=1e-4)
    assert np.abs(from_embeds - generate(pipe, PROMPT)).max() > 1e-3


# --- whole prompts ------------------------------------------------------------------------------


def test_prompt_embeddings(pipe):
    cond, uncond = T.prompt_embeddings(pipe, PROMPT)
    torch.testing.assert_close(cond, encode_ids(pipe, PROMPT))
    torch.testing.assert_close(uncond, encode_ids(pipe, ""))
    _, negative = T.prompt_embeddings(pipe, PROMPT, negative_prompt="a green square")
    torch.testing.assert_close(negative, encode_ids(pipe, "a green square"))
    cond_only, none = T.prompt_embeddings(pipe, PROMPT, guidance_scale=1.0)
    assert none is None
    torch.testing.assert_close(cond_only, cond)


def test_interpolate_prompts(pipe):
    path = T.interpolate_prompts(pipe, PROMPT, SQUARE_PROMPT, 5)
    assert len(path) == 5
    a, b = encode_ids(pipe, PROMPT), encode_ids(pipe, SQUARE_PROMPT)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path[2], (a + b) / 2)
    with pytest.raises(ValueError, match="n=1 must be at least 2"):
        T.interpolate_prompts(pipe, PROMPT, SQUARE_PROMPT, 1)


# --- textual inversion ---------------------------------------------------------------------------

TOKEN = "<my-shape>"


def random_embedding(seed: int, size: int = 32) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator("cpu").manual_seed(seed))


def test_textual_inversion_round_trip(tmp_path):
    embedding = random_embedding(0)
    path = T.save_textual_inversion(embedding, TOKEN, tmp_path / "learned_embeds.safetensors")
    saved = load_file(path)
    assert list(saved) == [TOKEN] and saved[TOKEN].shape == (1, 32)  # diffusers' format

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    vocab_size = len(pipe.tokenizer)
    token_id = T.load_textual_inversion(pipe, path, TOKEN)
    assert token_id == vocab_size
    pieces = pipe.tokenizer.tokenize(f"a {TOKEN} on a blue background")
    assert pieces == ["a</w>", TOKEN, "on</w>", "a</w>", "blue</w>", "background</w>"]
    ids = T.prompt_input_ids(pipe.tokenizer, f"a {TOKEN}")[0]
    assert (ids == token_id).sum() == 1
    torch.testing.assert_close(pipe.text_encoder.get_input_embeddings().weight[token_id], embedding)

    # A second pipeline with another vector for the same token: only prompts with the token change.
    other = tiny_pipeline()
    other.set_progress_bar_config(disable=True)
    other_path = T.save_textual_inversion(random_embedding(1), TOKEN, tmp_path / "other.safetensors")
    T.load_textual_inversion(other, other_path)
    with_token = f"a {TOKEN} on a blue background"
    assert np.abs(generate(pipe, with_token) - generate(other, with_token)).max() > 1e-3
    np.testing.assert_array_equal(generate(pipe, PROMPT), generate(other, PROMPT))


def test_saved_file_loads_with_plain_diffusers(tmp_path):
    path = T.save_textual_inversion(random_embedding(2), TOKEN, tmp_path / "emb.safetensors")
    pipe = tiny_pipeline()
    pipe.load_textual_inversion(str(path))  # the token name comes from the file
    assert TOKEN in pipe.tokenizer.get_vocab()


def test_multi_vector_embedding(tmp_path):
    vectors = torch.stack([random_embedding(3), random_embedding(4)])
    pipe = tiny_pipeline()
    token_id = T.load_textual_inversion(pipe, T.save_textual_inversion(vectors, TOKEN, tmp_path / "two.safetensors"))
    table = pipe.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(table[token_id], vectors[0])
    torch.testing.assert_close(table[pipe.tokenizer.convert_tokens_to_ids(f"{TOKEN}_1")], vectors[1])


def test_textual_inversion_errors(tmp_path):
    pipe = tiny_pipeline()
    with pytest.raises(FileNotFoundError, match="No textual-inversion file"):
        T.load_textual_inversion(pipe, tmp_path / "missing.safetensors", TOKEN)
    not_safetensors = tmp_path / "embedding.safetensors"
    not_safetensors.write_bytes(b"\x80\x04 pickled bytes, not safetensors")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        T.load_textual_inversion(pipe, not_safetensors, TOKEN)
    wrong_size = tmp_path / "wide.safetensors"
    save_file({TOKEN: torch.zeros(1, 768)}, str(wrong_size))
    with pytest.raises(ValueError, match="has size 768, but this text encoder's token embeddings have size 32"):
        T.load_textual_inversion(pipe, wrong_size, TOKEN)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        T.save_textual_inversion(random_embedding(0), TOKEN, tmp_path / "emb.bin")
    with pytest.raises(ValueError, match="token=''"):
        T.save_textual_inversion(random_embedding(0), "", tmp_path / "emb.safetensors")
    assert TOKEN not in pipe.tokenizer.get_vocab()  # nothing was half-loaded


# --- mini-SD ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not mini_available(), reason="mini-SD not trained yet")
def test_mini_swap_circle_for_square_draws_squares():
    from sdcourse.judge import describe
    from sdcourse.models import load_pipeline

    mini = load_pipeline("mini", "text2img")
    mini.set_progress_bar_config(disable=True)
    swapped = T.swap_token_embedding(mini, PROMPT, "circle", "square")
    seeds = range(6)

    def count_squares(**inputs) -> int:
        images = [generate_mini(mini, seed, **inputs) for seed in seeds]
        return sum(any(obj.shape == "square" for obj in describe(image).objects) for image in images)

    squares_swapped = count_squares(prompt_embeds=swapped)
    squares_original = count_squares(prompt=PROMPT)
    assert squares_swapped >= 3 and squares_swapped > squares_original, (squares_swapped, squares_original)


def generate_mini(pipe, seed: int, prompt=None, prompt_embeds=None) -> np.ndarray:
    return pipe(
        prompt,
        prompt_embeds=prompt_embeds,
        num_inference_steps=25,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images[0]
