"""Text conditioning (notebook 2): from a prompt to the embeddings the UNet attends to.

The path is: tokenizer (prompt → 77 token ids) → token embeddings (one learned vector per
id) + position embeddings (one learned vector per slot) → the CLIP transformer → 77
hidden states, `prompt_embeds`, which every cross-attention layer of the UNet reads.
These helpers open each step, so a student can change a token's vector (swap "circle"
for "square", mix two words, learn a new word with textual inversion) and see the image
follow.

transformers ≥ 5 flattened `CLIPTextModel`: its `embeddings`, `encoder` and
`final_layer_norm` sit on the model itself, where transformers 4.x kept them in
`text_encoder.text_model`. `clip_text_transformer` hides that difference.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import checks

# ------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenRow:
    """One slot of the tokenized prompt."""

    position: int
    id: int
    piece: str
    kind: str  # "start", "word", "end" or "pad"


@dataclass
class TokensTable:
    """The tokenized prompt, one row per slot; `print(table)` shows it as a table."""

    prompt: str
    rows: list[TokenRow] = field(default_factory=list)
    truncated: bool = False  # the prompt had more tokens than fit: the rest was cut

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    @property
    def ids(self) -> list[int]:
        return [row.id for row in self.rows]

    def kinds(self, kind: str) -> list[TokenRow]:
        """The rows of one kind, e.g. table.kinds("word")."""
        return [row for row in self.rows if row.kind == kind]

    def __repr__(self) -> str:
        return format_tokens_table(self)


def tokens_table(tokenizer, prompt: str, max_length: int | None = None) -> TokensTable:
    """Tokenize `prompt` as Stable Diffusion does (padded or cut to 77) and label every slot.

    Kinds: "start" (<|startoftext|>), "word" (a piece of the prompt; "</w>" marks a
    word's end), "end" (the first <|endoftext|>) and "pad" (the filler after it). SD 1.x
    pads with <|endoftext|> itself, so the end token repeats to slot 76; SD 2.x pads with "!".
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}.")
    max_length = tokenizer.model_max_length if max_length is None else checks.whole(max_length, "max_length", minimum=2)
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids
    n_tokens = len(tokenizer.tokenize(prompt)) + 2  # with the start and end tokens
    pieces = tokenizer.convert_ids_to_tokens(ids)

    rows, seen_end = [], False
    for position, (token_id, piece) in enumerate(zip(ids, pieces)):
        if seen_end:
            kind = "pad"
        elif position == 0 and token_id == tokenizer.bos_token_id:
            kind = "start"
        elif token_id == tokenizer.eos_token_id:
            kind, seen_end = "end", True
        else:
            kind = "word"
        rows.append(TokenRow(position, token_id, piece, kind))
    return TokensTable(prompt=prompt, rows=rows, truncated=n_tokens > max_length)


def format_tokens_table(table: TokensTable, max_pad_rows: int = 2) -> str:
    """The table as text: position, id, piece, kind; padding rows after the first
    `max_pad_rows` are summarised in one line."""
    used = len(table) - len(table.kinds("pad"))
    lines = [f"Tokens of {table.prompt!r}: {used} of {len(table)} slots used"]
    if table.truncated:
        lines[0] += " (TRUNCATED: the prompt had more tokens than fit)"
    width = max([len(row.piece) for row in table] + [5])
    lines.append(f"{'pos':>4}  {'id':>6}  {'piece':<{width}}  kind")
    shown_pad = 0
    for row in table:
        if row.kind == "pad":
            shown_pad += 1
            if shown_pad > max_pad_rows:
                continue
        lines.append(f"{row.position:>4}  {row.id:>6}  {row.piece:<{width}}  {row.kind}")
    hidden = len(table.kinds("pad")) - max_pad_rows
    if hidden > 0:
        lines.append(f"   … {hidden} more pad rows (id {table.kinds('pad')[-1].id})")
    return "\n".join(lines)


def prompt_input_ids(tokenizer, prompt: str) -> torch.Tensor:
    """Token ids of `prompt` as the pipelines make them: (1, 77), padded and truncated."""
    checks.prompt(prompt, "prompt")
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


# ------------------------------------------------------------------------- embeddings


def learn_token_embeddings(text_encoder, token_ids: list[int]) -> torch.nn.Parameter:
    """Make the token-embedding table trainable with gradients for `token_ids`' rows only: a hook
    zeroes the other rows' gradients, and without weight decay Adam then leaves them exactly as
    they were. Used by pivotal tuning (DreamBooth's identifier) and mini-SD's position words."""
    weight = text_encoder.get_input_embeddings().weight
    weight.requires_grad_(True)
    rows = torch.zeros(weight.shape[0], 1)
    rows[token_ids] = 1.0
    weight.register_hook(lambda grad: grad * rows.to(grad.device, grad.dtype))
    return weight


def clip_text_transformer(text_encoder):
    """The module holding `embeddings`, `encoder` and `final_layer_norm` of a CLIPTextModel:
    the model itself in transformers ≥ 5, `text_encoder.text_model` in 4.x."""
    return getattr(text_encoder, "text_model", text_encoder)


def token_and_position_embeddings(text_encoder, input_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """The two vectors that are summed for every slot before the transformer.

    Returns (token_embeddings (B, L, D): one row of the vocabulary table per id,
    position_embeddings (1, L, D): one learned vector per slot, the same for every prompt).
    """
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    device = text_encoder.device
    token_embeddings = text_encoder.get_input_embeddings()(input_ids.to(device))
    position_ids = torch.arange(input_ids.shape[1], device=device)[None]
    position_embedding = clip_text_transformer(text_encoder).embeddings.position_embedding
    return token_embeddings, position_embedding(position_ids)


def causal_attention_mask(length: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """(1, 1, L, L) additive mask: slot i may look at slots 0..i only (CLIP's text transformer is causal)."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return mask.triu(diagonal=1)[None, None]


def encode_from_embeddings(text_encoder, input_embeddings: torch.Tensor) -> torch.Tensor:
    """Run the CLIP text transformer on input embeddings (token + position): prompt_embeds (B, L, D).

    `text_encoder(input_ids)` does the same from ids; starting from embeddings lets us edit
    a token's vector first. `CLIPTextModel.forward` takes no `inputs_embeds`, so we call its
    public parts: the encoder layers with a causal mask we build, then the final layer norm.
    """
    transformer = clip_text_transformer(text_encoder)
    mask = causal_attention_mask(input_embeddings.shape[1], input_embeddings.dtype, input_embeddings.device)
    hidden_states = transformer.encoder(inputs_embeds=input_embeddings, attention_mask=mask).last_hidden_state
    return transformer.final_layer_norm(hidden_states)


def word_token_ids(tokenizer, word: str) -> list[int]:
    """The token ids a word becomes (most common words are one token; rare ones several)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"word={word!r} gives no tokens: pass a word such as 'circle'.")
    return ids


def prompt_words(tokenizer, input_ids) -> list[str]:
    """The prompt's words as the tokenizer sees them (lower case, pieces joined)."""
    words, current = [], ""
    for token_id in torch.as_tensor(input_ids).reshape(-1).tolist():
        if token_id == tokenizer.eos_token_id:
            break
        if token_id == tokenizer.bos_token_id:
            continue
        piece = tokenizer.convert_ids_to_tokens(token_id)
        current += piece.removesuffix("</w>")
        if piece.endswith("</w>"):
            words.append(current)
            current = ""
    return words + ([current] if current else [])


def word_positions(tokenizer, input_ids, word: str) -> list[list[int]]:
    """Where `word` sits in the tokenized prompt: one list of slots per occurrence."""
    ids = torch.as_tensor(input_ids).reshape(-1).tolist()
    target = word_token_ids(tokenizer, word)
    k = len(target)
    found = [list(range(i, i + k)) for i in range(len(ids) - k + 1) if ids[i : i + k] == target]
    if not found:
        raise ValueError(
            f"word={word!r} is not in the prompt; the prompt's words are {prompt_words(tokenizer, ids)}."
        )
    return found


def word_embedding(pipe, word: str) -> torch.Tensor:
    """The token embedding(s) of `word`: (k, D) for a word of k tokens."""
    ids = torch.tensor(word_token_ids(pipe.tokenizer, word), device=pipe.text_encoder.device)
    return pipe.text_encoder.get_input_embeddings()(ids)


@torch.no_grad()
def swap_token_embedding(pipe, prompt: str, word: str, replacement) -> torch.Tensor:
    """prompt_embeds (1, 77, D) for `prompt` with the token embedding of `word` replaced.

    `replacement` is another word ("square": its token embedding goes in `word`'s slots,
    which keep their own position embeddings) or a tensor (D,) / (k, D). Every occurrence
    of `word` is replaced. Use the result as `pipe(prompt_embeds=...)`.
    """
    input_ids = prompt_input_ids(pipe.tokenizer, prompt)
    token_embeddings, position_embeddings = token_and_position_embeddings(pipe.text_encoder, input_ids)
    occurrences = word_positions(pipe.tokenizer, input_ids, word)
    k = len(occurrences[0])

    if isinstance(replacement, str):
        new_embedding = word_embedding(pipe, replacement)
        if len(new_embedding) != k:
            raise ValueError(
                f"word={word!r} is {k} token(s) but replacement={replacement!r} is {len(new_embedding)}: "
                "pick words of the same token count (see tokens_table)."
            )
    else:
        new_embedding = torch.as_tensor(replacement).reshape(-1, token_embeddings.shape[-1])
        if len(new_embedding) not in (1, k):
            raise ValueError(f"replacement has {len(new_embedding)} vectors but word={word!r} is {k} token(s).")
    new_embedding = new_embedding.to(device=token_embeddings.device, dtype=token_embeddings.dtype)

    for slots in occurrences:
        token_embeddings[0, slots] = new_embedding
    return encode_from_embeddings(pipe.text_encoder, token_embeddings + position_embeddings)


@torch.no_grad()
def mix_token_embeddings(pipe, prompt: str, word: str, other_word: str, weight: float = 0.5) -> torch.Tensor:
    """prompt_embeds with `word`'s token embedding replaced by (1 - weight)·word + weight·other_word.

    weight=0 gives the prompt unchanged, 1 the full swap, 0.5 a half-circle half-square word.
    """
    weight = checks.finite(weight, "weight", example=0.5)
    a, b = word_embedding(pipe, word), word_embedding(pipe, other_word)
    if a.shape != b.shape:
        raise ValueError(
            f"word={word!r} is {len(a)} token(s) but other_word={other_word!r} is {len(b)}: "
            "pick words of the same token count (see tokens_table)."
        )
    return swap_token_embedding(pipe, prompt, word, (1 - weight) * a + weight * b)


# ---------------------------------------------------------------------- whole prompts


@torch.no_grad()
def prompt_embeddings(pipe, prompt, negative_prompt=None, guidance_scale: float = 7.5):
    """(cond, uncond) prompt embeddings, as the pipeline makes them with `pipe.encode_prompt`.

    uncond encodes `negative_prompt` ("" by default) and is None when guidance_scale ≤ 1,
    where the pipeline skips classifier-free guidance.
    """
    guidance_scale = checks.finite(guidance_scale, "guidance_scale", low=0, example=7.5)
    checks.prompt(prompt, "prompt")
    cond, uncond = pipe.encode_prompt(
        prompt,
        device=pipe.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=guidance_scale > 1,
        negative_prompt=negative_prompt,
    )
    return cond, uncond


def interpolate_prompts(pipe, prompt_a: str, prompt_b: str, n: int) -> list[torch.Tensor]:
    """`n` prompt_embeds on the straight line from prompt_a's to prompt_b's (both included)."""
    n = checks.whole(n, "n", minimum=2)  # the two prompts
    embeds_a, _ = prompt_embeddings(pipe, prompt_a, guidance_scale=1.0)
    embeds_b, _ = prompt_embeddings(pipe, prompt_b, guidance_scale=1.0)
    return [(1 - t) * embeds_a + t * embeds_b for t in np.linspace(0.0, 1.0, n)]


# ------------------------------------------------------------------ textual inversion


def save_textual_inversion(embedding: torch.Tensor, token: str, path) -> Path:
    """Save a learned embedding in diffusers' format: a safetensors file {token: (k, D)}.

    `pipe.load_textual_inversion(path)` (or `load_textual_inversion` below) reads it back.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path={str(path)!r} must end in .safetensors (the only format sdcourse writes or loads).")
    if not isinstance(token, str) or not token.strip():
        raise ValueError(f"token={token!r} must be a non-empty string such as '<my-shape>'.")
    embedding = torch.as_tensor(embedding).detach().cpu()
    if embedding.ndim == 1:
        embedding = embedding[None]
    if embedding.ndim != 2:
        raise ValueError(f"embedding must be (D,) or (k, D), got shape {tuple(embedding.shape)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({token: embedding.contiguous()}, str(path))
    return path


def load_textual_inversion(pipe, path, token: str | None = None) -> int:
    """Add a textual-inversion token from a LOCAL safetensors file to `pipe`; return its id.

    A thin wrapper over `pipe.load_textual_inversion` that refuses anything but a local
    safetensors file (pickled .bin/.pt files can run code when loaded) and checks the
    vector size first. `token` overrides the name stored in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No textual-inversion file at {str(path)!r}: pass the path of a local .safetensors file."
        )
    try:
        with safe_open(str(path), framework="pt") as file:
            shapes = {key: file.get_slice(key).get_shape() for key in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{str(path)!r} is not a safetensors file ({error}); convert .bin/.pt embeddings with "
            "safetensors.torch.save_file first."
        ) from None
    hidden_size = pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    for key, shape in shapes.items():
        if shape[-1] != hidden_size:
            raise ValueError(
                f"the embedding {key!r} in {str(path)!r} has size {shape[-1]}, but this text encoder's "
                f"token embeddings have size {hidden_size}: it was trained for another model."
            )
    pipe.load_textual_inversion(str(path), token=token, use_safetensors=True, local_files_only=True)
    if token is None:
        token = next(iter(shapes))
    return pipe.tokenizer.convert_tokens_to_ids(token)
