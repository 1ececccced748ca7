"""Cross-attention maps: which pixels of the image look at which word of the prompt.

In every cross-attention layer (`attn2` in SD's transformer blocks) each latent pixel
attends over the prompt's 77 token embeddings. The attention probabilities, laid out on
the latent grid, give one map per token. `trace(pipe)` records them while the pipeline runs:

    with trace(pipe) as tc:
        image = pipe("a red circle on the left and a yellow square on the right").images[0]
    overlay(image, tc.word_heatmap("circle"))

How it works, and why this way:
- diffusers' default processor calls SDPA, which never materialises the probabilities. So
  the layers we record get a `RecordingProcessor` that computes them explicitly
  (softmax(q·kᵀ·scale)) and returns what the default processor would; every other layer
  keeps its processor. On exit the original processors come back, also on error.
- Maps are added to one running sum per latent grid size, so memory does not grow with the
  number of steps. Only the conditional half of the guidance batch [uncond, cond] is kept:
  the unconditional half attends to the empty prompt.
- The prompt's token ids are read from the text encoder's input, the timestep and latent
  size from the UNet's input (forward pre-hooks: plain torch, no patched library code).
- A heat map is the mean over the recorded layers, heads and steps, upsampled bicubically,
  clamped at 0 and min–max normalised to [0, 1] (as DAAM does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from PIL import Image

from . import checks
from .plotting import overlay_heatmap


class RecordingProcessor:
    """Cross-attention written out with explicit probabilities, which it hands to the trace.

    The same computation as diffusers' `AttnProcessor`. Calls the trace does not want
    (a filtered-out timestep or resolution) go to the layer's original processor.
    """

    def __init__(self, tracer: AttentionTrace, original):
        self.tracer = tracer
        self.original = original

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        if encoder_hidden_states is None or not self.tracer.wants(hidden_states.shape[1]):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        residual = hidden_states
        batch_size, n_tokens, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, n_tokens, batch_size)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (batch·heads, pixels, head_dim)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (batch·heads, tokens, head_dim)
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        attention_probs = attn.get_attention_scores(query, key, attention_mask)  # (batch·heads, pixels, tokens)
        self.tracer.record(attention_probs.view(batch_size, attn.heads, -1, n_tokens))

        hidden_states = attn.batch_to_head_dim(torch.bmm(attention_probs, value))
        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttentionTrace:
    """What `trace` yields: running sums of cross-attention maps, and heat maps from them."""

    def __init__(self, pipe, heads=None, resolutions=None, timesteps=None):
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.heads = heads
        self.resolutions = resolutions
        self.timesteps = timesteps
        self.input_ids: torch.Tensor | None = None  # (prompts, 77): what the text encoder saw
        self.timesteps_recorded: list[float] = []
        self.sums: dict[tuple[int, int], torch.Tensor] = {}  # grid (h, w) -> (rows, h·w, 77)
        self.counts: dict[tuple[int, int], int] = {}  # grid -> layer calls summed
        self._latent_size: tuple[int, int] | None = None
        self._guided = False
        self._recording = False
        self._expect_prompt = True

    # --- hooks, called while the pipeline runs ------------------------------------------

    def on_text_encoder(self, module, args, kwargs):
        """Keep the prompt's token ids: the first text-encoder call of a run (the second is the negative prompt)."""
        if not self._expect_prompt:
            return
        input_ids = (args[0] if args else kwargs["input_ids"]).detach().cpu()
        if self.sums and not torch.equal(input_ids, self.input_ids):
            raise ValueError(
                "This trace already recorded another prompt; open a new `with trace(pipe)` for each prompt (batch)."
            )
        self.input_ids = input_ids
        self._expect_prompt = False

    def on_unet(self, module, args, kwargs):
        """Note the latent size, the timestep and whether the batch is [uncond, cond]."""
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = float(torch.as_tensor(timestep).flatten()[0])
        self._latent_size = tuple(sample.shape[-2:])
        self._guided = bool(self.pipe.do_classifier_free_guidance)
        self._recording = self.timesteps is None or self.timesteps[0] <= t <= self.timesteps[1]
        if self._recording:
            self.timesteps_recorded.append(t)
        self._expect_prompt = True

    def grid(self, pixels: int) -> tuple[int, int]:
        """(height, width) of a layer's latent grid with `pixels` positions."""
        height, width = self._latent_size
        downscale = math.sqrt(height * width / pixels)
        rows = round(height / downscale)
        return rows, pixels // rows

    def wants(self, pixels: int) -> bool:
        """Should the layer now running (with `pixels` query positions) be recorded?"""
        return self._recording and (self.resolutions is None or self.grid(pixels)[0] in self.resolutions)

    def record(self, attention_probs: torch.Tensor) -> None:
        """Add one layer's probabilities (batch, heads, pixels, tokens) to the running sum of its grid."""
        if self._guided:
            attention_probs = attention_probs[attention_probs.shape[0] // 2 :]  # cond half of [uncond, cond]
        if self.heads is not None:
            attention_probs = attention_probs[:, self.heads]
        maps = attention_probs.detach().mean(dim=1).float()  # (rows, pixels, tokens)
        key = self.grid(maps.shape[1])
        if key not in self.sums:
            self.sums[key] = torch.zeros_like(maps)
            self.counts[key] = 0
        if self.sums[key].shape != maps.shape:
            raise ValueError(
                f"This trace recorded batches of shape {tuple(self.sums[key].shape)} and now "
                f"{tuple(maps.shape)}; open a new `with trace(pipe)` for each batch size."
            )
        self.sums[key] += maps
        self.counts[key] += 1

    # --- reading the prompt ------------------------------------------------------------

    def _prompt_ids(self, prompt_index: int) -> list[int]:
        """Token ids of one prompt, from <|startoftext|> to the first <|endoftext|>."""
        if self.input_ids is None:
            raise ValueError(
                "No prompt seen yet: run the pipeline inside `with trace(pipe) as tc:` "
                "(called with prompt_embeds? pass the prompt: trace(pipe, prompt=...))."
            )
        n_prompts = self.input_ids.shape[0]
        if not 0 <= prompt_index < n_prompts:
            raise ValueError(f"prompt_index={prompt_index} is out of range: the pipeline ran {n_prompts} prompt(s).")
        ids = self.input_ids[prompt_index].tolist()
        end = ids.index(self.tokenizer.eos_token_id)
        return ids[: end + 1]

    def tokens(self, prompt_index: int = 0) -> list[str]:
        """The prompt's token pieces, e.g. ['<|startoftext|>', 'a</w>', 'zig', 'zag</w>', '<|endoftext|>']."""
        return self.tokenizer.convert_ids_to_tokens(self._prompt_ids(prompt_index))

    def words(self, prompt_index: int = 0) -> list[str]:
        """The prompt's words as the model saw them (lower case, after truncation)."""
        words, current = [], ""
        for piece in self.tokens(prompt_index)[1:-1]:
            current += piece.removesuffix("</w>")
            if piece.endswith("</w>"):
                words.append(current)
                current = ""
        return words

    # --- heat maps ----------------------------------------------------------------------

    def _size(self, size) -> tuple[int, int]:
        if size is None:  # the image size
            return tuple(side * self.pipe.vae_scale_factor for side in self._latent_size)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if not all(isinstance(side, int) and side > 0 for side in (height, width)):
            raise ValueError(f"size={size!r} must be a positive int or a (height, width) pair of them.")
        return height, width

    def token_maps(self, size=None, prompt_index: int = 0) -> torch.Tensor:
        """(tokens, height, width): mean attention of each token, upsampled, clamped at 0, not normalised.

        Unlike the heat maps these keep the tokens' relative strength (the start token
        usually soaks up most of the attention).
        """
        n_tokens = len(self._prompt_ids(prompt_index))
        if not self.sums:
            raise ValueError(
                "Nothing was recorded: run the pipeline inside the `with trace(pipe)` block, "
                "and check that its layers / resolutions / timesteps filters match something."
            )
        height, width = self._size(size)
        n_rows = next(iter(self.sums.values())).shape[0]
        images_per_prompt = n_rows // self.input_ids.shape[0]
        rows = slice(prompt_index * images_per_prompt, (prompt_index + 1) * images_per_prompt)
        total = 0.0
        for (h, w), sums in self.sums.items():
            maps = sums[rows].mean(dim=0)[:, :n_tokens]  # (pixels, tokens), mean over this prompt's images
            maps = maps.T.reshape(n_tokens, 1, h, w)
            total = total + F.interpolate(maps, size=(height, width), mode="bicubic", align_corners=False)
        return (total / sum(self.counts.values()))[:, 0].clamp(min=0).cpu()

    def token_heatmaps(self, size=None, prompt_index: int = 0) -> list[tuple[str, np.ndarray]]:
        """(token piece, heat map) for every token from <|startoftext|> to <|endoftext|>.

        size: an int or (height, width); default the image size.
        """
        maps = self.token_maps(size, prompt_index)
        return [(piece, normalise(heatmap)) for piece, heatmap in zip(self.tokens(prompt_index), maps)]

    def word_heatmap(self, word: str, size=None, prompt_index: int = 0) -> np.ndarray:
        """Heat map of `word` (its sub-word tokens merged, all its occurrences): 2-D, in [0, 1].

        `word` may also be a phrase ("red circle") or a special token ("<|endoftext|>").
        """
        ids = self._prompt_ids(prompt_index)
        if word in (self.tokenizer.bos_token, self.tokenizer.eos_token):
            query = self.tokenizer.convert_tokens_to_ids([word])
        else:
            query = self.tokenizer(word, add_special_tokens=False).input_ids
        starts = [i for i in range(len(ids) - len(query) + 1) if query and ids[i : i + len(query)] == query]
        if not starts:
            message = f"word={word!r} is not in prompt {prompt_index}, whose words are {self.words(prompt_index)}."
            if len(ids) == self.tokenizer.model_max_length:
                message += (
                    f" The prompt fills all {len(ids)} token positions: the pipeline truncated it, so "
                    "words past that point were cut off and have no attention map."
                )
            raise ValueError(message)
        positions = [start + k for start in starts for k in range(len(query))]
        return normalise(self.token_maps(size, prompt_index)[positions].mean(dim=0))


def normalise(heatmap: torch.Tensor) -> np.ndarray:
    """Min–max normalise to [0, 1] (a constant map becomes all zeros)."""
    heatmap = heatmap - heatmap.min()
    peak = heatmap.max()
    if peak > 0:
        heatmap = heatmap / peak
    return heatmap.numpy().astype(np.float32)


def cross_attention_layers(unet) -> dict[str, Attention]:
    """The UNet's cross-attention layers (the `attn2` of each transformer block), by module name."""
    return {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and module.is_cross_attention
    }


def _select_layers(unet, layers) -> dict[str, Attention]:
    available = cross_attention_layers(unet)
    if layers is None:
        return available
    if callable(layers):
        chosen = {name: module for name, module in available.items() if layers(name)}
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        names = [name.removesuffix(".processor") for name in names]
        unknown = [name for name in names if name not in available]
        if unknown:
            raise ValueError(
                f"layers={unknown} are not cross-attention layers of this UNet; choose from {list(available)}."
            )
        chosen = {name: available[name] for name in names}
    if not chosen:
        raise ValueError(f"layers={layers!r} selects no layer; choose from {list(available)}.")
    return chosen


def _check_options(pipe, chosen, heads, resolutions, timesteps):
    """Validate the options before anything is installed; return them in the form the trace uses."""
    if not hasattr(type(pipe), "do_classifier_free_guidance"):
        raise TypeError(
            f"trace needs a pipeline that says whether it batches [uncond, cond] (do_classifier_free_guidance); "
            f"{type(pipe).__name__} does not. Use a text2img, img2img, inpaint or depth2img pipeline."
        )
    if heads is not None:
        heads = [heads] if isinstance(heads, int) else list(heads)
        fewest = min(chosen.items(), key=lambda item: item[1].heads)
        if not heads or not all(isinstance(h, int) and 0 <= h < fewest[1].heads for h in heads):
            raise ValueError(
                f"heads={heads} must be head indices below {fewest[1].heads} (layer {fewest[0]} has "
                f"{fewest[1].heads} heads), or None for all heads."
            )
    if resolutions is not None:
        resolutions = {resolutions} if isinstance(resolutions, int) else set(resolutions)
        if not resolutions or not all(isinstance(r, int) and r > 0 for r in resolutions):
            raise ValueError(f"resolutions={resolutions} must be latent grid sizes such as {{16, 8}}, or None for all.")
    if timesteps is not None:
        timesteps = checks.number_list(timesteps, "timesteps", example="(500, 999)")
        if len(timesteps) != 2:
            raise ValueError(f"timesteps={timesteps!r} must be a (low, high) range such as (500, 999), or None.")
        timesteps = (min(timesteps), max(timesteps))
    return heads, resolutions, timesteps


@contextmanager
def trace(
    pipe,
    layers: Iterable[str] | str | Callable[[str], bool] | None = None,
    resolutions: Iterable[int] | int | None = None,
    timesteps: tuple[float, float] | None = None,
    heads: Iterable[int] | int | None = None,
    prompt: str | list[str] | None = None,
):
    """Record the cross-attention maps of `pipe` while it runs inside the `with` block.

    layers: cross-attention layer names (see `cross_attention_layers(pipe.unet)`), a filter
        `name -> bool`, or None for all of them.
    resolutions: latent grid sizes to record, e.g. {16, 8} (the grid's height for non-square
        images), or None for all.
    timesteps: (low, high): record only steps whose timestep t lies in that range, e.g.
        (500, 999) for the early, layout-forming steps; None for all steps.
    heads: head indices to average, or None for all heads.
    prompt: only when the pipeline is called with `prompt_embeds` (no text-encoder call to
        read the tokens from): the prompt(s) those embeddings came from.

    Yields an `AttentionTrace`; the pipeline's attention processors are restored on exit.
    """
    unet = pipe.unet
    chosen = _select_layers(unet, layers)
    heads, resolutions, timesteps = _check_options(pipe, chosen, heads, resolutions, timesteps)
    tracer = AttentionTrace(pipe, heads, resolutions, timesteps)
    if prompt is not None:
        tracer.input_ids = pipe.tokenizer(
            prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
        tracer._expect_prompt = False

    originals = unet.attn_processors
    processors = dict(originals)
    for name in chosen:
        processors[f"{name}.processor"] = RecordingProcessor(tracer, originals[f"{name}.processor"])
    hooks = [unet.register_forward_pre_hook(tracer.on_unet, with_kwargs=True)]
    if prompt is None:
        hooks.append(pipe.text_encoder.register_forward_pre_hook(tracer.on_text_encoder, with_kwargs=True))
    try:
        unet.set_attn_processor(processors)  # consumes the dict it gets: `originals` stays intact
        yield tracer
    finally:
        for hook in hooks:
            hook.remove()
        unet.set_attn_processor(dict(originals))


def overlay(image, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Blend a heat map (2-D, [0, 1]; resized to fit) over an image; returns an RGB PIL image.

    image: a PIL image, or an (H, W, 3) array (uint8, or float in [0, 1] as `output_type="np"` gives).
    """
    return Image.fromarray(overlay_heatmap(image, heatmap, alpha=alpha, cmap=cmap))
