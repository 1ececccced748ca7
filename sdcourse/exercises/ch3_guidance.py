"""Chapter 3 exercises: the CFG formula, the scale to use, one guided UNet call (checked by a whole loop), rescale."""

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..latents import seeded_generator
from .core import Case, Exercise, Mistake, describe_difference
from .inputs import check_size, seeded_randn

# --------------------------------------------------------------------------- 3.1 the formula


def _formula_cases():
    uncond, text = seeded_randn((1, 4, 8, 8), 0), seeded_randn((1, 4, 8, 8), 1)
    return [Case((uncond, text, scale), f"guidance_scale={scale}") for scale in (7.5, 0, 1, 3)]


FORMULA = Exercise(
    id="3.1",
    title="The classifier-free guidance formula",
    name="apply_guidance",
    solution_code='''
def apply_guidance(noise_pred_uncond, noise_pred_text, guidance_scale):
    # start from the unconditional prediction, walk guidance_scale times the way the text points
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
''',
    hint_text="ε̂ = ε_uncond + s · (ε_text − ε_uncond). At scale 0 it must give the unconditional prediction, "
              "at scale 1 the text one.",
    cases=_formula_cases,
    mistakes=[
        Mistake("swapped", "Unconditional and text predictions are swapped: start from `noise_pred_uncond` and move "
                "towards `noise_pred_text`.", lambda u, t, s: t + s * (u - t)),
        Mistake("sign", "Wrong sign: guidance moves *towards* the text prediction, + s · (text − uncond).",
                lambda u, t, s: u - s * (t - u)),
        Mistake("no_base", "You left out the starting point: the result is ε_uncond + s · (ε_text − ε_uncond), "
                "not just the scaled difference.", lambda u, t, s: s * (t - u)),
        Mistake("text_base", "Start from ε_uncond, not ε_text: at scale 1 the result must be the text prediction "
                "itself.", lambda u, t, s: t + s * (t - u)),
    ],
    passed_message="Right: scale 0 gives the unconditional model, 1 the text-conditioned one, and larger scales "
                   "extrapolate past it.",
    ja=dict(
        title='Classifier-free ガイダンスの式',
        hint='ε̂ = ε_uncond + s · (ε_text − ε_uncond)。スケール 0 '
             'では無条件の予測、スケール 1 ではテキストの予測にならなければなりません。',
        passed='正解です：スケール 0 は無条件のモデル、1 はテキスト条件付きのモデルで、'
               'それより大きなスケールはその先へ外挿します。',
        mistakes={
            'swapped': '無条件の予測とテキストの予測が入れ替わっています：`noise_pred_uncond` から出発して '
                       '`noise_pred_text` の方へ進んでください。',
            'sign': '符号が逆です：ガイダンスはテキストの予測の *方へ* 進みます。+ s · (text − '
                    'uncond) です。',
            'no_base': '出発点が抜けています：結果は ε_uncond + s · (ε_text − ε_uncond) で、'
                       'スケールした差だけではありません。',
            'text_base': 'ε_text ではなく ε_uncond から出発してください：スケール 1 '
                         'で結果はテキストの予測そのものにならなければなりません。',
        },
    ),
)

# --------------------------------------------------------------------------- 3.2 one guided UNet call


PROMPT = "a red circle on a blue background"


def _encoder_hidden_states(pipe):
    prompt_embeds, negative = pipe.encode_prompt(PROMPT, device=pipe.device, num_images_per_prompt=1,
                                                 do_classifier_free_guidance=True, negative_prompt="")
    return torch.cat([negative, prompt_embeds])  # [uncond, text]


def _latent_grid(pipe):
    return check_size(pipe) // pipe.vae_scale_factor


def _guided_cases(pipe):
    grid = _latent_grid(pipe)
    latents = seeded_randn((1, pipe.unet.config.in_channels, grid, grid), 0).to(pipe.device, pipe.dtype)
    t = pipe.scheduler.config.num_train_timesteps // 2
    return [Case((pipe.unet, latents, torch.tensor(t, device=pipe.device), _encoder_hidden_states(pipe), 7.5),
                 f"noise at t = {t}, guidance_scale=7.5")]


def _one_call(unet, latents, t, states):
    return unet(torch.cat([latents] * 2), t, encoder_hidden_states=states).sample.chunk(2)


def _swapped_chunks(unet, latents, t, states, scale):
    text, uncond = _one_call(unet, latents, t, states)
    return uncond + scale * (text - uncond)


def _whole_loop(answer, context, steps: int = 4) -> str | None:
    """Run the pipeline's loop with the learner's function inside; its latents must be the pipeline's."""
    pipe = context["pipe"]
    grid, size = _latent_grid(pipe), check_size(pipe)
    theirs = pipe(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
                  generator=seeded_generator(0), output_type="latent").images
    states = _encoder_hidden_states(pipe)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=pipe.device)
    latents = randn_tensor((1, pipe.unet.config.in_channels, grid, grid), generator=seeded_generator(0),
                           device=pipe.device, dtype=states.dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        noise_pred = answer(pipe.unet, scheduler.scale_model_input(latents, t), t, states, 7.5)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    difference = describe_difference(latents, theirs, atol=1e-3)
    return None if difference is None else f"one step is right, but a whole loop with it differs from pipe(...): {difference}."


GUIDED_CALL = Exercise(
    id="3.3",
    title="One guided UNet call, then a whole loop with it",
    name="guided_noise_pred",
    solution_code='''
import torch


def guided_noise_pred(unet, latents, t, encoder_hidden_states, guidance_scale):
    latent_model_input = torch.cat([latents] * 2)  # one batch of two: [uncond, text]
    noise_pred = unet(latent_model_input, t, encoder_hidden_states=encoder_hidden_states).sample
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
''',
    hint_text="Duplicate the latents with `torch.cat([latents] * 2)` so that one UNet call predicts both "
              "branches (`encoder_hidden_states` is [uncond, text] in that order), split the prediction with "
              "`.chunk(2)`, and apply the formula of exercise 3.1.",
    cases=_guided_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("chunk_order", "The batch is [uncond, text], in the order of `encoder_hidden_states`: "
                "`noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)`.", _swapped_chunks),
        Mistake("text_only", "That is the text prediction alone, as at guidance_scale 1: run the UNet on both halves "
                "and mix them.", lambda unet, x, t, states, s: unet(x, t, encoder_hidden_states=states[1:]).sample),
        Mistake("uncond_only", "That is the unconditional prediction alone: mix both halves with the guidance formula.",
                lambda unet, x, t, states, s: _one_call(unet, x, t, states)[0]),
    ],
    extra_check=_whole_loop,
    atol=1e-3,
    passed_message="Right: a loop built on your function makes exactly the latents of `pipe(...)` with the same seed.",
    ja=dict(
        title='ガイダンス付きの UNet の呼び出し 1 回と、それを使ったループ全体',
        hint='`torch.cat([latents] * 2)` で潜在変数を複製して 1 回の UNet '
             'の呼び出しで両方の枝を予測し（`encoder_hidden_states` はこの順で '
             '[uncond, text]）、予測を `.chunk(2)` で分け、演習 3.1 '
             'の式を適用しましょう。',
        passed='正解です：あなたの関数で作ったループは、同じシードで `pipe(...)` '
               'とまったく同じ潜在変数を作ります。',
        mistakes={
            'chunk_order': 'バッチは `encoder_hidden_states` の順で [uncond, text] です：'
                           '`noise_pred_uncond, noise_pred_text = '
                           'noise_pred.chunk(2)`。',
            'text_only': 'それは guidance_scale 1 のときのようなテキストの予測だけです：UNet '
                         'を両方の半分で実行して混ぜてください。',
            'uncond_only': 'それは無条件の予測だけです：両方の半分をガイダンスの式で混ぜてください。',
        },
    ),
)

# --------------------------------------------------------------------------- 3.3 guidance rescale


def _rescale_cases():
    text = seeded_randn((2, 4, 8, 8), 0) * torch.tensor([1.0, 0.5])[:, None, None, None]
    guided = text + 6 * seeded_randn((2, 4, 8, 8), 1) * torch.tensor([0.3, 1.0])[:, None, None, None]
    return [Case((guided, text, phi), f"two images, guidance_rescale={phi}") for phi in (0.7, 0.3)]


def _rescaled(noise_cfg, text, phi, dims=None, inverted=False, mix=True):
    dims = list(range(1, noise_cfg.ndim)) if dims is None else dims
    ratio = text.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg / ratio if inverted else noise_cfg * ratio
    return phi * rescaled + (1 - phi) * noise_cfg if mix else rescaled


RESCALE = Exercise(
    id="3.4",
    title="Guidance rescale",
    name="rescale_noise",
    solution_code='''
def rescale_noise(noise_cfg, noise_pred_text, guidance_rescale):
    dims = list(range(1, noise_cfg.ndim))  # every dimension but the batch: one spread per image
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)  # the guided prediction at the text prediction's spread
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg
''',
    hint_text="Take one standard deviation per image (`.std(dim=[1, 2, 3], keepdim=True)`) of both predictions, "
              "scale the guided one by their ratio, then mix: φ · rescaled + (1 − φ) · guided.",
    cases=_rescale_cases,
    mistakes=[
        Mistake("whole_batch", "Take one standard deviation per image, over every dimension but the batch: images "
                "of one batch can have very different spreads.", lambda g, t, p: _rescaled(g, t, p, dims=[0, 1, 2, 3])),
        Mistake("inverted", "The ratio is upside down: bring the guided prediction *down* to the text prediction's "
                "spread, std(text) / std(guided).", lambda g, t, p: _rescaled(g, t, p, inverted=True)),
        Mistake("no_mix", "Mix the rescaled prediction with the original: φ · rescaled + (1 − φ) · guided, with "
                "φ = guidance_rescale.", lambda g, t, p: _rescaled(g, t, p, mix=False)),
    ],
    passed_message="Right: the same as `guidance.rescale_guidance` and diffusers' `rescale_noise_cfg`.",
    ja=dict(
        title='ガイダンスのリスケール（guidance rescale）',
        hint='両方の予測について画像ごとに 1 つの標準偏差を取り（`.std(dim=[1, 2, 3], '
             'keepdim=True)`）、ガイダンス後の予測をその比でスケールしてから混ぜましょう：φ · '
             'rescaled + (1 − φ) · guided。',
        passed='正解です：`guidance.rescale_guidance` や diffusers の '
               '`rescale_noise_cfg` と同じです。',
        mistakes={
            'whole_batch': 'バッチ以外のすべての次元について、画像ごとに 1 つの標準偏差を取ってください：'
                           '同じバッチの画像でも広がりは大きく違うことがあります。',
            'inverted': '比が逆さまです：ガイダンス後の予測をテキストの予測の広がりまで *下げます*。std(text) / '
                        'std(guided) です。',
            'no_mix': 'リスケールした予測を元の予測と混ぜてください：φ · rescaled + (1 − φ) · '
                      'guided、φ = guidance_rescale です。',
        },
    ),
)

# --------------------------------------------------------------------------- 3.4 where adherence stops improving


def _curve(values):
    return {scale: {"all_correct": value, "colour": 1.0} for scale, value in values.items()}


def _best_scale_cases():
    return [
        Case((_curve({1: 0.47, 3: 0.81, 7.5: 0.75, 12: 0.62}), 0.02), "all_correct 0.47, 0.81, 0.75, 0.62 at scales 1, 3, 7.5, 12"),
        Case((_curve({1: 0.20, 2: 0.50, 4: 0.69, 8: 0.70}), 0.02), "all_correct 0.20, 0.50, 0.69, 0.70 at scales 1, 2, 4, 8"),
        Case((_curve({0: 0.10, 1: 0.30}), 0.05), "two scales"),
    ]


ENOUGH_GUIDANCE = Exercise(
    id="3.2",
    title="The scale where adherence stops improving",
    name="enough_guidance",
    solution_code='''
def enough_guidance(curve, tolerance):
    best = max(summary["all_correct"] for summary in curve.values())
    # the smallest scale that comes within `tolerance` of the best: more guidance buys nothing
    return min(scale for scale, summary in curve.items() if summary["all_correct"] >= best - tolerance)
''',
    hint_text="First find the best `all_correct` over all scales; then, among the scales whose value is at least "
              "best − tolerance, return the smallest scale (a key of `curve`).",
    cases=_best_scale_cases,
    mistakes=[
        Mistake("argmax", "That is the scale where adherence is highest. The question is where it stops improving: "
                "the smallest scale within `tolerance` of the best.",
                lambda curve, tol: max(curve, key=lambda s: curve[s]["all_correct"])),
        Mistake("value", "Return the guidance scale (a key of `curve`), not its score.",
                lambda curve, tol: max(summary["all_correct"] for summary in curve.values())),
        Mistake("largest_scale", "Return the smallest scale that is good enough, not the largest one tried.",
                lambda curve, tol: max(curve)),
    ],
    passed_message="Right: beyond that scale guidance buys no more adherence on this measure, and costs variety.",
    ja=dict(
        title='忠実さが伸びなくなるスケール',
        hint='まずすべてのスケールの中で最良の `all_correct` を見つけ、次に値が最良 − '
             'tolerance 以上のスケールのうち、最小のスケール（`curve` のキー）を返しましょう。',
        passed='正解です：そのスケールを超えると、この尺度ではガイダンスはもう忠実さを上げず、'
               '多様性を犠牲にするだけです。',
        mistakes={
            'argmax': 'それは忠実さが最も高いスケールです。問われているのは伸びが止まる場所、つまり最良から '
                      '`tolerance` 以内に入る最小のスケールです。',
            'value': 'そのスコアではなく、ガイダンススケール（`curve` のキー）を返してください。',
            'largest_scale': '試した中で最大のスケールではなく、十分に良い最小のスケールを返してください。',
        },
    ),
)

EXERCISES = [FORMULA, ENOUGH_GUIDANCE, GUIDED_CALL, RESCALE]
