"""Chapter 6 exercises: DDIM's timesteps, x̂0 from the noise prediction, the DDIM step, a loss-guidance step."""

import torch

from .core import Case, Exercise, Mistake
from .inputs import seeded_randn

# --------------------------------------------------------------------------- 6.1 which timesteps a sampler visits


def _timestep_cases(pipe):
    config = pipe.scheduler.config
    return [Case((steps, config.num_train_timesteps, config.steps_offset), f"num_inference_steps={steps}")
            for steps in (20, 7, 50)]


def _leading(steps, total, offset):
    return (torch.arange(steps) * (total // steps)).flip(0) + offset


TIMESTEPS = Exercise(
    id="6.1",
    title="The timesteps DDIM visits",
    name="ddim_timesteps",
    solution_code='''
import torch


def ddim_timesteps(num_inference_steps, num_train_timesteps, steps_offset):
    step_ratio = num_train_timesteps // num_inference_steps  # every step_ratio-th timestep
    timesteps = torch.arange(num_inference_steps) * step_ratio + steps_offset
    return timesteps.flip(0)  # from the noisiest to the cleanest
''',
    hint_text="With 1000 training timesteps and 20 steps DDIM takes every 50th: 0, 50, …, 950, shifted by "
              "`steps_offset`, and visited from the noisiest down.",
    cases=_timestep_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("no_offset", "SD's schedulers shift every timestep by `steps_offset` (1): add it.",
                lambda n, total, offset: _leading(n, total, 0)),
        Mistake("ascending", "Sampling runs from noise to image: the timesteps must count *down*.",
                lambda n, total, offset: _leading(n, total, offset).flip(0)),
        Mistake("linspace", "DDIM's default ('leading') spacing takes every (num_train_timesteps // "
                "num_inference_steps)-th timestep from 0, not evenly spaced values from 999 down.",
                lambda n, total, offset: torch.linspace(total - 1, 0, n).round().long()),
    ],
    passed_message="Right: exactly `DDIMScheduler.set_timesteps`' timesteps for SD's config.",
    ja=dict(
        title='DDIM が訪れるタイムステップ',
        hint='学習のタイムステップが 1000 で 20 ステップなら、DDIM は 50 ごとに取ります：0、50、'
             '…、950 を `steps_offset` だけずらし、最もノイズの多いものから順に訪れます。',
        passed='正解です：SD の設定での `DDIMScheduler.set_timesteps` '
               'のタイムステップとまったく同じです。',
        mistakes={
            'no_offset': 'SD のスケジューラーはどのタイムステップも `steps_offset`（1）だけずらします：'
                         'それを足してください。',
            'ascending': 'サンプリングはノイズから画像へ進みます：タイムステップは *減って* いかなければなりません。',
            'linspace': "DDIM の既定（'leading'）の間隔は、999 から等間隔の値ではなく、0 から "
                        '(num_train_timesteps // num_inference_steps) '
                        'ごとのタイムステップを取ります。',
        },
    ),
)

# --------------------------------------------------------------------------- 6.2 x̂0 from the noise prediction


def _x0_cases(pipe):
    alphas_cumprod = type(pipe.scheduler).from_config(pipe.scheduler.config).alphas_cumprod
    latents, noise_pred = seeded_randn((1, 4, 8, 8), 0), seeded_randn((1, 4, 8, 8), 1)
    return [Case((latents, noise_pred, alphas_cumprod[t]), f"ᾱ_t of t = {t}") for t in (801, 201)]


PREDICT_X0 = Exercise(
    id="6.2",
    title="The predicted clean latents x̂0",
    name="predict_x0",
    solution_code='''
def predict_x0(latents, noise_pred, alpha_prod_t):
    # solve x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε for x0, with the predicted ε
    return (latents - (1 - alpha_prod_t).sqrt() * noise_pred) / alpha_prod_t.sqrt()
''',
    hint_text="Start from x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε: move the noise term to the other side, then divide.",
    cases=_x0_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("no_sqrt", "Use the square roots: x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε.",
                lambda x, e, a: (x - (1 - a) * e) / a),
        Mistake("plus", "Subtract the noise term: x0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t.",
                lambda x, e, a: (x + (1 - a).sqrt() * e) / a.sqrt()),
        Mistake("no_division", "Divide by √ᾱ_t: x_t holds only √ᾱ_t of the clean latents.",
                lambda x, e, a: x - (1 - a).sqrt() * e),
    ],
    passed_message="Right: the `pred_original_sample` a DDIM step returns.",
    ja=dict(
        title='予測したきれいな潜在変数 x̂0',
        hint='x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε から始めましょう：'
             'ノイズの項を反対側に移してから割ります。',
        passed='正解です：DDIM のステップが返す `pred_original_sample` です。',
        mistakes={
            'no_sqrt': '平方根を使ってください：x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε。',
            'plus': 'ノイズの項は引いてください：x0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t。',
            'no_division': '√ᾱ_t で割ってください：x_t にはきれいな潜在変数が √ᾱ_t 倍しか含まれていません。',
        },
    ),
)

# --------------------------------------------------------------------------- 6.3 the DDIM step


def _ddim_cases(pipe):
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    alphas_cumprod = scheduler.alphas_cumprod
    latents, noise_pred = seeded_randn((1, 4, 8, 8), 0), seeded_randn((1, 4, 8, 8), 1)
    return [Case((latents, noise_pred, alphas_cumprod[t], alphas_cumprod[prev]), f"from t = {t} to {prev}")
            for t, prev in ((951, 901), (301, 251))]


def _x0(x, e, a):
    return (x - (1 - a).sqrt() * e) / a.sqrt()


DDIM_STEP = Exercise(
    id="6.3",
    title="One DDIM step by hand",
    name="ddim_step",
    solution_code='''
def ddim_step(latents, noise_pred, alpha_prod_t, alpha_prod_t_prev):
    x0 = (latents - (1 - alpha_prod_t).sqrt() * noise_pred) / alpha_prod_t.sqrt()  # the model's guess of the image
    # noise that guess again, with the same predicted noise, to the previous (less noisy) timestep
    return alpha_prod_t_prev.sqrt() * x0 + (1 - alpha_prod_t_prev).sqrt() * noise_pred
''',
    hint_text="Two lines: predict x̂0 (exercise 6.2), then re-noise it to the *previous* timestep with the same "
              "predicted noise: √ᾱ_prev · x̂0 + √(1 − ᾱ_prev) · ε̂.",
    cases=_ddim_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("same_alpha", "Use ᾱ of the previous, less noisy timestep (alpha_prod_t_prev) for the new latents; "
                "with ᾱ_t they come back unchanged.", lambda x, e, a, ap: a.sqrt() * _x0(x, e, a) + (1 - a).sqrt() * e),
        Mistake("x0_only", "DDIM does not jump to x̂0: it re-noises x̂0 to the previous timestep, "
                "√ᾱ_prev · x̂0 + √(1 − ᾱ_prev) · ε̂.", lambda x, e, a, ap: _x0(x, e, a)),
        Mistake("no_sqrt", "Use square roots of ᾱ_prev and 1 − ᾱ_prev.",
                lambda x, e, a, ap: ap * _x0(x, e, a) + (1 - ap) * e),
    ],
    passed_message="Right: exactly `DDIMScheduler.step` with eta = 0, the deterministic sampler.",
    ja=dict(
        title='DDIM の 1 ステップを手で',
        hint='2 行です：x̂0 を予測し（演習 6.2）、同じ予測ノイズで *前の* '
             'タイムステップまでノイズ化し直します：√ᾱ_prev · x̂0 + √(1 − ᾱ_prev) · '
             'ε̂。',
        passed='正解です：eta = 0 の `DDIMScheduler.step`、'
               '決定的なサンプラーとまったく同じです。',
        mistakes={
            'same_alpha': '新しい潜在変数には、前の（よりノイズの少ない）タイムステップの ᾱ（alpha_prod_t_prev）'
                          'を使ってください。ᾱ_t では潜在変数がそのまま戻ってきます。',
            'x0_only': 'DDIM は x̂0 に跳ぶのではありません：x̂0 を前のタイムステップまでノイズ化し直します。'
                       '√ᾱ_prev · x̂0 + √(1 − ᾱ_prev) · ε̂ です。',
            'no_sqrt': 'ᾱ_prev と 1 − ᾱ_prev の平方根を使ってください。',
        },
    ),
)

# --------------------------------------------------------------------------- 6.4 a loss-guidance step


def _loss_cases():
    target = seeded_randn((1, 4, 8, 8), 3)

    def distance(latents):
        return ((latents - target) ** 2).mean()

    latents = seeded_randn((1, 4, 8, 8), 0)
    return [Case((latents, distance, scale), f"a squared-distance loss, loss_scale={scale}") for scale in (20.0, 3.0)]


def _gradient(latents, loss_fn):
    latents = latents.detach().requires_grad_(True)
    return torch.autograd.grad(loss_fn(latents), latents)[0]


LOSS_STEP = Exercise(
    id="6.4",
    title="One step of loss guidance",
    name="loss_guidance_step",
    solution_code='''
import torch


def loss_guidance_step(latents, loss_fn, loss_scale):
    latents = latents.detach().requires_grad_(True)  # track how the loss depends on the latents
    loss = loss_fn(latents)
    gradient = torch.autograd.grad(loss, latents)[0]  # the direction that raises the loss fastest
    return (latents - loss_scale * gradient).detach()  # so step the other way
''',
    hint_text="Make the latents a leaf that requires a gradient (`latents.detach().requires_grad_(True)`), compute "
              "the loss, get `torch.autograd.grad(loss, latents)[0]`, and step *against* it, scaled by loss_scale.",
    cases=_loss_cases,
    no_grad=False,
    mistakes=[
        Mistake("uphill", "You stepped uphill: subtract the gradient to lower the loss.",
                lambda x, f, s: x + s * _gradient(x, f)),
        Mistake("loss_value", "Step along the loss's *gradient* (torch.autograd.grad(loss, latents)), not by the loss "
                "value itself.", lambda x, f, s: x - s * f(x)),
        Mistake("unscaled", "Multiply the gradient by `loss_scale`: it sets how hard the loss steers.",
                lambda x, f, s: x - _gradient(x, f)),
    ],
    passed_message="Right: `sampling.text2img(loss_fn=...)` takes this step at every timestep, with x̂0 decoded by the VAE.",
    ja=dict(
        title='損失ガイダンスの 1 ステップ',
        hint='潜在変数を勾配が必要な葉にし（`latents.detach().requires_grad_(True)`）'
             '、損失を計算して `torch.autograd.grad(loss, latents)[0]` '
             'を求め、loss_scale でスケールしてその *逆向きに* 進みましょう。',
        passed='正解です：`sampling.text2img(loss_fn=...)` は毎タイムステップ、VAE '
               'でデコードした x̂0 についてこのステップを取ります。',
        mistakes={
            'uphill': '上り坂へ進んでいます：損失を下げるには勾配を引いてください。',
            'loss_value': '損失の値そのものではなく、損失の *勾配*（torch.autograd.grad(loss, '
                          'latents)）に沿って進んでください。',
            'unscaled': '勾配に `loss_scale` を掛けてください：それが損失の導く強さを決めます。',
        },
    ),
)

EXERCISES = [TIMESTEPS, PREDICT_X0, DDIM_STEP, LOSS_STEP]
