"""Chapter 4 exercises: img2img's first timestep, the inpainting UNet's input, latent blending,
the depth channel, the upscaler's input."""

import numpy as np
import torch
import torch.nn.functional as F

from .. import world
from .core import Case, Exercise, Mistake
from .inputs import check_size, seeded_randn

# --------------------------------------------------------------------------- 4.1 where img2img starts


def _fresh_scheduler(pipe):
    return type(pipe.scheduler).from_config(pipe.scheduler.config)


def _start_cases(pipe):
    return [Case((_fresh_scheduler(pipe), steps, strength), f"num_inference_steps={steps}, strength={strength}")
            for steps, strength in [(20, 0.63), (50, 0.3), (20, 1.0)]]


def _start_at(scheduler, steps, index):
    scheduler.set_timesteps(steps)
    return int(scheduler.timesteps[index])


FIRST_TIMESTEP = Exercise(
    id="4.1",
    title="The timestep img2img starts at",
    name="first_timestep",
    solution_code='''
def first_timestep(scheduler, num_inference_steps, strength):
    scheduler.set_timesteps(num_inference_steps)
    steps_to_run = int(num_inference_steps * strength)  # diffusers rounds down
    return int(scheduler.timesteps[num_inference_steps - steps_to_run])  # skip the first ones
''',
    hint_text="img2img runs the *last* int(num_inference_steps · strength) of the scheduler's timesteps. Call "
              "`scheduler.set_timesteps(num_inference_steps)`, then index `scheduler.timesteps` where those start.",
    cases=_start_cases,
    needs=("pipe",),
    task="img2img",
    mistakes=[
        Mistake("reversed", "img2img skips the *first* timesteps and runs the last int(steps · strength): start at "
                "index num_inference_steps − int(num_inference_steps · strength).",
                lambda sch, n, s: _start_at(sch, n, min(int(n * s), n - 1))),
        Mistake("rounded", "diffusers rounds the number of steps to run *down*, with int(), not to the nearest.",
                lambda sch, n, s: _start_at(sch, n, n - round(n * s))),
        Mistake("scaled_strength", "img2img starts at one of the scheduler's own timesteps, not at strength × 1000.",
                lambda sch, n, s: int(s * sch.config.num_train_timesteps)),
    ],
    passed_message="Right: the same start as `sampling.img2img_timesteps` and diffusers' img2img pipeline.",
    ja=dict(
        title='img2img が始まるタイムステップ',
        hint='img2img はスケジューラーのタイムステップの *最後の* '
             'int(num_inference_steps · strength) 個を実行します。'
             '`scheduler.set_timesteps(num_inference_steps)` を呼び、'
             'それが始まる位置で `scheduler.timesteps` を引きましょう。',
        passed='正解です：`sampling.img2img_timesteps` や diffusers の '
               'img2img パイプラインと同じ出発点です。',
        mistakes={
            'reversed': 'img2img は *最初の* タイムステップを飛ばし、最後の int(steps · '
                        'strength) 個を実行します：インデックス num_inference_steps − '
                        'int(num_inference_steps · strength) から始めてください。',
            'rounded': 'diffusers は実行するステップ数を、四捨五入ではなく int() で *切り捨て* ます。',
            'scaled_strength': 'img2img はスケジューラー自身のタイムステップの 1 つから始まります。strength × '
                               '1000 ではありません。',
        },
    ),
)

# --------------------------------------------------------------------------- 4.2 the inpainting UNet's 9 channels


def _block_mask(size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=np.float32)
    x, y = rng.integers(0, size // 2, 2)
    mask[y:y + size // 2 + 3, x:x + size // 3 + 5] = 1.0
    return torch.from_numpy(mask)


def _inpaint_cases(pipe):
    size = check_size(pipe)
    grid = size // pipe.vae_scale_factor
    latents = seeded_randn((2, 4, grid, grid), 0)
    mask = torch.stack([_block_mask(size, 0), _block_mask(size, 1)])[:, None]
    masked = seeded_randn((2, 4, grid, grid), 1)
    return [Case((latents, mask, masked), f"a batch of two, {size} px masks, a {grid}×{grid} latent grid")]


def _nine(latents, mask, masked, mode="nearest", order=(0, 1, 2), invert=False):
    mask = F.interpolate(mask, size=latents.shape[-2:], mode=mode)
    mask = 1 - mask if invert else mask
    parts = [latents, mask, masked]
    return torch.cat([parts[i] for i in order], dim=1)


INPAINT_INPUT = Exercise(
    id="4.2",
    title="The inpainting UNet's 9 input channels",
    name="inpaint_unet_input",
    solution_code='''
import torch
import torch.nn.functional as F


def inpaint_unet_input(latents, mask, masked_image_latents):
    mask = F.interpolate(mask, size=latents.shape[-2:])  # the mask on the latent grid (nearest neighbour)
    return torch.cat([latents, mask, masked_image_latents], dim=1)  # 4 + 1 + 4 = 9 channels
''',
    hint_text="The mask comes at image size: bring it to the latent grid with `F.interpolate(mask, "
              "size=latents.shape[-2:])`. Then concatenate along the channel dimension (dim=1) in the order the "
              "model was trained with: latents, mask, masked-image latents.",
    cases=_inpaint_cases,
    needs=("pipe",),
    task="inpaint",
    mistakes=[
        Mistake("order", "The inpainting UNet was trained with its channels in one order: latents (4), mask (1), "
                "masked-image latents (4).", lambda x, m, mi: _nine(x, m, mi, order=(0, 2, 1))),
        Mistake("inverted", "Keep the mask as it is: white (1) marks the region to repaint, as the model was trained.",
                lambda x, m, mi: _nine(x, m, mi, invert=True)),
        Mistake("bilinear", "Resize the mask with nearest-neighbour interpolation (F.interpolate's default), as "
                "diffusers does: bilinear blurs its edge.", lambda x, m, mi: _nine(x, m, mi, mode="bilinear")),
    ],
    passed_message="Right: 9 channels, as `pipe.unet.config.in_channels` says; the pipeline builds exactly this at "
                   "every step.",
    ja=dict(
        title='Inpainting 用 UNet の 9 つの入力チャンネル',
        hint='マスクは画像サイズで来ます：`F.interpolate(mask, '
             'size=latents.shape[-2:])` で潜在変数の格子にしましょう。次に、'
             'モデルが学習した順（潜在変数、マスク、マスクした画像の潜在変数）でチャンネルの次元（dim=1）'
             'に沿って連結します。',
        passed='正解です：`pipe.unet.config.in_channels` が示すとおり 9 チャンネルで、'
               'パイプラインは毎ステップちょうどこれを作ります。',
        mistakes={
            'order': 'Inpainting 用 UNet はチャンネルを決まった順で学習しました：潜在変数（4）、マスク（1）'
                     '、マスクした画像の潜在変数（4）。',
            'inverted': 'マスクはそのまま使ってください：モデルが学習したとおり、白（1）が描き直す領域を示します。',
            'bilinear': 'diffusers と同じく、マスクは最近傍補間（F.interpolate の既定）'
                        'で縮小してください：bilinear は縁をぼかします。',
        },
    ),
)

# --------------------------------------------------------------------------- 4.3 one latent-blending step


def _blend_cases(pipe):
    scheduler = _fresh_scheduler(pipe)
    grid = check_size(pipe) // pipe.vae_scale_factor
    latents, init, noise = (seeded_randn((1, 4, grid, grid), seed) for seed in (0, 1, 2))
    mask = F.interpolate(_block_mask(grid * 4, 3)[None, None], size=(grid, grid))
    return [Case((latents, init, noise, mask, scheduler, torch.tensor([t])), f"t = {t}") for t in (601, 101)]


def _blend(latents, init, noise, mask, scheduler, t, clean=False, invert=False):
    known = init if clean else scheduler.add_noise(init, noise, t)
    keep = 1 - mask if invert else mask
    return keep * latents + (1 - keep) * known


BLEND = Exercise(
    id="4.3",
    title="One step of inpainting by latent blending",
    name="blend",
    solution_code='''
def blend(latents, init_latents, noise, mask, scheduler, t):
    known = scheduler.add_noise(init_latents, noise, t)  # the input, as noisy as the latents are at t
    return mask * latents + (1 - mask) * known  # generated inside the mask, the input outside
''',
    hint_text="Outside the mask the latents must be the input image's, noised to the same timestep t: "
              "`scheduler.add_noise(init_latents, noise, t)`. Then combine with the mask (1 = repaint).",
    cases=_blend_cases,
    needs=("pipe",),
    task="img2img",
    mistakes=[
        Mistake("clean", "Paste the input back *as noisy as the latents are* at t (scheduler.add_noise), not clean: "
                "clean latents in a noisy picture confuse the UNet at the next step.",
                lambda *args: _blend(*args, clean=True)),
        Mistake("inverted", "The mask is 1 where the model repaints: keep `latents` there and the input elsewhere.",
                lambda *args: _blend(*args, invert=True)),
    ],
    passed_message="Right: this is what `sampling.inpaint_by_blending` does after every scheduler step.",
    ja=dict(
        title='潜在変数のブレンドによる Inpainting の 1 ステップ',
        hint='マスクの外の潜在変数は、同じタイムステップ t までノイズ化した入力画像のものでなければなりません：'
             '`scheduler.add_noise(init_latents, noise, t)`。'
             'それからマスク（1 = 描き直す）で組み合わせましょう。',
        passed='正解です：これは `sampling.inpaint_by_blending` '
               'がスケジューラーの各ステップの後で行うことです。',
        mistakes={
            'clean': '入力は、きれいなままではなく t での潜在変数と '
                     '*同じだけノイズを乗せて*（scheduler.add_noise）貼り戻してください：'
                     'ノイズの多い絵の中のきれいな潜在変数は、次のステップで UNet を混乱させます。',
            'inverted': 'マスクはモデルが描き直すところで 1 です：そこでは `latents` を残し、'
                        'それ以外では入力を使ってください。',
        },
    ),
)

# --------------------------------------------------------------------------- 4.4 the depth channel


def _depth_cases():
    scenes = [s for s in world.sample_scenes(12, seed=5) if len(s.objects) == 2][:2]
    depths = [torch.from_numpy(np.asarray(world.render(s).depth, dtype=np.float32)) for s in scenes]
    depth = torch.stack(depths)[:, None] * torch.tensor([1.0, 0.4])[:, None, None, None]
    return [Case((depth, 16, 16), "two 64 px depth maps, a 16×16 latent grid")]


def _depth(depth, h, w, first_normalise=False, zero_one=False, whole_batch=False):
    def normalise(d):
        dims = [0, 1, 2, 3] if whole_batch else [1, 2, 3]
        low, high = torch.amin(d, dim=dims, keepdim=True), torch.amax(d, dim=dims, keepdim=True)
        unit = (d - low) / (high - low)
        return unit if zero_one else 2 * unit - 1

    if first_normalise:
        return F.interpolate(normalise(depth), size=(h, w), mode="bicubic", align_corners=False)
    return normalise(F.interpolate(depth, size=(h, w), mode="bicubic", align_corners=False))


DEPTH_CHANNEL = Exercise(
    id="4.4",
    title="The depth model's fifth channel",
    name="depth_channel",
    solution_code='''
import torch
import torch.nn.functional as F


def depth_channel(depth, latent_height, latent_width):
    depth = F.interpolate(depth, size=(latent_height, latent_width), mode="bicubic", align_corners=False)
    low = torch.amin(depth, dim=[1, 2, 3], keepdim=True)  # each image by its own range:
    high = torch.amax(depth, dim=[1, 2, 3], keepdim=True)  # only relative depth matters
    return 2 * (depth - low) / (high - low) - 1  # nearest = +1, farthest = -1
''',
    hint_text="Resize first (`F.interpolate(..., mode=\"bicubic\", align_corners=False)`), then normalise each "
              "image by its own minimum and maximum (`torch.amin/amax` over dims [1, 2, 3]) to [−1, 1].",
    cases=_depth_cases,
    mistakes=[
        Mistake("zero_one", "The UNet expects depth in [−1, 1]: 2 · (d − min) / (max − min) − 1, not [0, 1].",
                lambda d, h, w: _depth(d, h, w, zero_one=True)),
        Mistake("normalise_first", "Resize first, then normalise: bicubic resizing overshoots at sharp edges, so "
                "normalising first leaves values outside [−1, 1].", lambda d, h, w: _depth(d, h, w, first_normalise=True)),
        Mistake("whole_batch", "Normalise each image by its *own* minimum and maximum (dims [1, 2, 3]), not by the "
                "whole batch's.", lambda d, h, w: _depth(d, h, w, whole_batch=True)),
    ],
    passed_message="Right: the same channel diffusers' depth-to-image pipeline builds from `depth_map=`.",
    ja=dict(
        title='深度モデルの 5 つ目のチャンネル',
        hint='まず縮小し（`F.interpolate(..., mode="bicubic", '
             'align_corners=False)`）、次に各画像をそれ自身の最小値と最大値（次元 [1, 2, '
             '3] についての `torch.amin/amax`）で [−1, 1] に正規化しましょう。',
        passed='正解です：diffusers の Depth-to-Image パイプラインが '
               '`depth_map=` から作るのと同じチャンネルです。',
        mistakes={
            'zero_one': 'UNet は [−1, 1] の深度を期待します：[0, 1] ではなく 2 · (d − min) '
                        '/ (max − min) − 1 です。',
            'normalise_first': '先に縮小し、それから正規化してください：bicubic の縮小は鋭い縁で行き過ぎるので、'
                               '先に正規化すると [−1, 1] の外の値が残ります。',
            'whole_batch': '各画像を、バッチ全体のではなくそれ *自身の* 最小値と最大値（次元 [1, 2, 3]）'
                           'で正規化してください。',
        },
    ),
)

# --------------------------------------------------------------------------- 4.5 the upscaler's 7 channels


def _upscale_cases(pipe):
    low = min(pipe.unet.config.sample_size, 32)  # the low-res side; the sizes do not matter here
    latents, low_res, noise = seeded_randn((1, 4, low, low), 0), seeded_randn((1, 3, low, low), 1), seeded_randn((1, 3, low, low), 2)
    scheduler = type(pipe.low_res_scheduler).from_config(pipe.low_res_scheduler.config)
    return [Case((latents, low_res.clamp(-1, 1), noise, torch.tensor([level]), scheduler), f"noise_level={level}")
            for level in (20, 150)]


UPSCALER_INPUT = Exercise(
    id="4.5",
    title="The x4 upscaler's 7 input channels",
    name="upscaler_unet_input",
    solution_code='''
import torch


def upscaler_unet_input(latents, low_res, noise, noise_level, low_res_scheduler):
    noisy_low_res = low_res_scheduler.add_noise(low_res, noise, noise_level)  # the image is noised too
    return torch.cat([latents, noisy_low_res], dim=1)  # 4 latent channels + 3 RGB channels
''',
    hint_text="First noise the low-resolution image to `noise_level` with `low_res_scheduler.add_noise(low_res, "
              "noise, noise_level)`; then put it behind the latents along the channel dimension.",
    cases=_upscale_cases,
    needs=("pipe",),
    task="upscale",
    mistakes=[
        Mistake("not_noised", "Noise the low-res image to `noise_level` first (low_res_scheduler.add_noise): the "
                "upscaler was trained on noised inputs and is told their level as its class label.",
                lambda x, low, n, level, sch: torch.cat([x, low], dim=1)),
        Mistake("order", "Latents first, then the image's 3 channels: the order the upscaler was trained with.",
                lambda x, low, n, level, sch: torch.cat([sch.add_noise(low, n, level), x], dim=1)),
    ],
    passed_message="Right: 7 channels, what `StableDiffusionUpscalePipeline` feeds its UNet at every step.",
    ja=dict(
        title='x4 アップスケーラーの 7 つの入力チャンネル',
        hint='まず `low_res_scheduler.add_noise(low_res, noise, '
             'noise_level)` で低解像度画像を `noise_level` までノイズ化し、'
             'それからチャンネルの次元に沿って潜在変数の後ろに置きましょう。',
        passed='正解です：7 チャンネル、`StableDiffusionUpscalePipeline` '
               'が毎ステップ UNet に与えるものです。',
        mistakes={
            'not_noised': 'まず低解像度画像を `noise_level` '
                          'までノイズ化してください（low_res_scheduler.add_noise）：'
                          'アップスケーラーはノイズ化した入力で学習し、そのレベルをクラスラベルとして教えられています。',
            'order': '潜在変数が先、その後に画像の 3 チャンネル：アップスケーラーが学習した順です。',
        },
    ),
)

EXERCISES = [FIRST_TIMESTEP, INPAINT_INPUT, BLEND, DEPTH_CHANNEL, UPSCALER_INPUT]
