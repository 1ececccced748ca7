"""Chapter 1 exercises: why latents, the VAE's shapes and scaling, noising, the schedule, slerp."""

from types import SimpleNamespace

import torch
from diffusers import DDPMScheduler

from .core import Case, Exercise, Mistake
from .inputs import check_image_pixels, seeded_randn
from ..testing import SD_VAE_CONFIG, X4_UPSCALER_VAE_CONFIG

# --------------------------------------------------------------------------- 1.1 attention cost


def _attention_cases():
    return [Case((768, 512, 8), "height=768, width=512, vae_factor=8"),
            Case((64, 64, 4), "height=64, width=64, vae_factor=4")]


ATTENTION = Exercise(
    id="1.1",
    title="How big is a self-attention table on latents?",
    name="attention_weights",
    solution_code='''
def attention_weights(height, width, vae_factor):
    positions = (height // vae_factor) * (width // vae_factor)  # one per latent
    return positions * positions  # every position attends to every position
''',
    hint_text="Count the latent positions first: the image shrinks by `vae_factor` on each side. "
              "The table has one row and one column per position.",
    cases=_attention_cases,
    mistakes=[
        Mistake("pixels", "You counted pixels, not latents: the UNet runs on the VAE's latent grid, "
                "height/vae_factor × width/vae_factor positions.", lambda h, w, f: (h * w) ** 2),
        Mistake("not_squared", "That is the number of positions, not of attention weights: each of the n "
                "positions has one weight for each of the n positions, n × n in all.",
                lambda h, w, f: (h // f) * (w // f)),
        Mistake("side_only", "The positions are the latent grid's height × width, not one side squared.",
                lambda h, w, f: ((h // f) ** 2) ** 2),
    ],
    passed_message="Right: an image twice as wide and high has 16× the attention weights, which is why "
                   "SD works on a grid 8× smaller per side.",
    ja=dict(
        title='潜在変数上の自己アテンションの表はどれほど大きいか',
        hint='まず潜在変数の位置を数えましょう：画像は各辺で `vae_factor` 分の 1 になります。'
             '表は位置ごとに 1 行と 1 列を持ちます。',
        passed='正解です：縦横 2 倍の画像はアテンション重みが 16 倍になります。SD が一辺 8 分の 1 '
               'の格子で動くのはこのためです。',
        mistakes={
            'pixels': '潜在変数ではなく画素を数えています：UNet が動くのは VAE の潜在変数の格子、'
                      'height/vae_factor × width/vae_factor 個の位置の上です。',
            'not_squared': 'それは位置の数で、アテンション重みの数ではありません：n 個の位置それぞれが n 個の位置に 1 '
                           'つずつ重みを持つので、全部で n × n 個です。',
            'side_only': '位置の数は潜在変数の格子の高さ × 幅で、一辺の 2 乗ではありません。',
        },
    ),
)

# --------------------------------------------------------------------------- 1.2 the latent shape


def _configs(pipe):
    return [
        (pipe.vae.config, "this model's VAE"),
        (SimpleNamespace(**SD_VAE_CONFIG), "SD 1.5's VAE"),
        (SimpleNamespace(**X4_UPSCALER_VAE_CONFIG), "the x4 upscaler's VAE"),
    ]


def _latent_shape_cases(pipe):
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    cases = [Case((config, 512, 768), f"{label}, height=512, width=768") for config, label in _configs(pipe)]
    return [Case((pipe.vae.config, size, size), f"this model's VAE, height=width={size}")] + cases


LATENT_SHAPE = Exercise(
    id="1.2",
    title="The latent shape from the VAE's config",
    name="latent_shape",
    solution_code='''
def latent_shape(vae_config, height, width):
    factor = 2 ** (len(vae_config.block_out_channels) - 1)  # every block but the last halves the size
    return (vae_config.latent_channels, height // factor, width // factor)
''',
    hint_text="`vae_config.block_out_channels` has one entry per encoder block, and every block except the "
              "last one halves the height and width. The number of channels is `vae_config.latent_channels`.",
    cases=_latent_shape_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("every_block", "Your latent grid is half as large as it should be: a VAE with n blocks "
                "downsamples only n − 1 times (the last block keeps the size).",
                lambda c, h, w: (c.latent_channels, h // 2 ** len(c.block_out_channels), w // 2 ** len(c.block_out_channels))),
        Mistake("colour_channels", "The latents have `vae_config.latent_channels` channels, not the image's 3 "
                "colour channels.", lambda c, h, w: (3, h // 2 ** (len(c.block_out_channels) - 1), w // 2 ** (len(c.block_out_channels) - 1))),
        Mistake("no_division", "Divide the height and width by the VAE's downscaling factor: latents are "
                "smaller than the image.", lambda c, h, w: (c.latent_channels, h, w)),
        Mistake("swapped", "Height comes before width, as in every PyTorch image tensor (channels, height, width).",
                lambda c, h, w: (c.latent_channels, w // 2 ** (len(c.block_out_channels) - 1), h // 2 ** (len(c.block_out_channels) - 1))),
    ],
    passed_message="Right, and it works for any VAE: SD's (×8), mini-SD's (×4) and the x4 upscaler's (×4).",
    ja=dict(
        title='VAE の設定から潜在変数の形状を求める',
        hint='`vae_config.block_out_channels` はエンコーダーのブロックごとに 1 '
             'つの値を持ち、最後以外のすべてのブロックが高さと幅を半分にします。チャンネル数は '
             '`vae_config.latent_channels` です。',
        passed='正解です。しかもどの VAE でも動きます：SD の VAE（×8）、mini-SD の VAE（×4）'
               '、x4 アップスケーラーの VAE（×4）。',
        mistakes={
            'every_block': '潜在変数の格子が本来の半分の大きさです：n 個のブロックを持つ VAE は n − 1 '
                           '回しか縮小しません（最後のブロックはサイズを保ちます）。',
            'colour_channels': '潜在変数のチャンネル数は `vae_config.latent_channels` で、画像の 3 '
                               'つの色チャンネルではありません。',
            'no_division': '高さと幅を VAE の縮小率で割ってください：潜在変数は画像より小さいのです。',
            'swapped': 'PyTorch のどの画像テンソルとも同じく、高さが幅より先です（チャンネル、高さ、幅）。',
        },
    ),
)

# --------------------------------------------------------------------------- 1.3 encode with the scaling factor


def _to_latents_cases(pipe):
    one = check_image_pixels(pipe, seed=0)
    two = torch.cat([check_image_pixels(pipe, seed=1), check_image_pixels(pipe, seed=2)])
    return [Case((pipe.vae, one), "one image"), Case((pipe.vae, two), "a batch of two images")]


TO_LATENTS = Exercise(
    id="1.3",
    title="Encode an image into the latents the UNet sees",
    name="to_latents",
    solution_code='''
import torch


def to_latents(vae, pixels):
    with torch.no_grad():
        latent_dist = vae.encode(pixels).latent_dist  # a Gaussian per latent
    return latent_dist.mean * vae.config.scaling_factor  # its mean, scaled to unit variance
''',
    hint_text="`vae.encode(pixels)` returns an object whose `latent_dist` is a Gaussian; take its mean, then "
              "scale it with `vae.config.scaling_factor` so that the latents have about unit variance.",
    cases=_to_latents_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("no_scaling", "You forgot `vae.config.scaling_factor`: without it the latents are several times "
                "larger than what the UNet was trained on.",
                lambda vae, x: vae.encode(x).latent_dist.mean),
        Mistake("divided", "Multiply by `vae.config.scaling_factor` when encoding; dividing by it is what the "
                "decoder side does.", lambda vae, x: vae.encode(x).latent_dist.mean / vae.config.scaling_factor),
    ],
    random_message="Your latents change from call to call: `latent_dist.sample()` draws a random point of the "
                   "Gaussian. To look at an image's latents use its mean (`latent_dist.mean` or `.mode()`).",
    passed_message="Right: these are exactly the latents `sdcourse.latents.encode` gives.",
    ja=dict(
        title='画像を UNet が見る潜在変数にエンコードする',
        hint='`vae.encode(pixels)` が返すオブジェクトの `latent_dist` '
             'はガウス分布です。その平均を取り、潜在変数の分散がおよそ 1 になるよう '
             '`vae.config.scaling_factor` でスケールしましょう。',
        passed='正解です：これは `sdcourse.latents.encode` が返す潜在変数とまったく同じです。',
        random='潜在変数が呼び出しのたびに変わります：`latent_dist.sample()` '
               'はガウス分布のランダムな点を引きます。画像の潜在変数を見るには、'
               'その平均（`latent_dist.mean` または `.mode()`）を使いましょう。',
        mistakes={
            'no_scaling': '`vae.config.scaling_factor` を忘れています：それがないと、潜在変数は '
                          'UNet が学習したものより何倍も大きくなります。',
            'divided': 'エンコードでは `vae.config.scaling_factor` を掛けます。'
                       '割るのはデコード側の処理です。',
        },
    ),
)

# --------------------------------------------------------------------------- 1.4 noising by hand


def _schedule(pipe):
    return DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod


def _add_noise_cases(pipe):
    shape = (2, pipe.unet.config.in_channels, 8, 8)
    x0, noise, alphas_cumprod = seeded_randn(shape, 0), seeded_randn(shape, 1), _schedule(pipe)
    return [Case((x0, noise, alphas_cumprod, t), f"t = {t}") for t in (500, 999, 0)]


def _off_by_one(x0, noise, alphas_cumprod, t):
    alpha_bar = alphas_cumprod[t - 1]
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


ADD_NOISE = Exercise(
    id="1.4",
    title="Noise latents to timestep t",
    name="add_noise",
    solution_code='''
def add_noise(x0, noise, alphas_cumprod, t):
    alpha_bar = alphas_cumprod[t]  # the share of the variance that is still signal
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
''',
    hint_text="Read ᾱ_t from `alphas_cumprod[t]`, then write the formula x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε "
              "with `.sqrt()`.",
    cases=_add_noise_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("no_sqrt", "Use the square roots √ᾱ_t and √(1 − ᾱ_t): ᾱ_t is a share of the variance, and the "
                "weights of x0 and ε are standard deviations.",
                lambda x0, n, a, t: a[t] * x0 + (1 - a[t]) * n),
        Mistake("swapped", "Signal and noise are swapped: ᾱ_t is the signal's share (close to 1 at t = 0), so "
                "√ᾱ_t multiplies x0.", lambda x0, n, a, t: (1 - a[t]).sqrt() * x0 + a[t].sqrt() * n),
        Mistake("noise_no_sqrt", "The noise's weight needs a square root too: √(1 − ᾱ_t).",
                lambda x0, n, a, t: a[t].sqrt() * x0 + (1 - a[t]) * n),
        Mistake("off_by_one", "Off by one timestep: index `alphas_cumprod` with t itself (timesteps count from 0).",
                _off_by_one),
    ],
    passed_message="Right: this is exactly what `scheduler.add_noise` computes.",
    ja=dict(
        title='潜在変数をタイムステップ t までノイズ化する',
        hint='ᾱ_t を `alphas_cumprod[t]` から読み、式 x_t = √ᾱ_t · x0 + '
             '√(1 − ᾱ_t) · ε を `.sqrt()` を使って書きましょう。',
        passed='正解です：これは `scheduler.add_noise` が計算するものとまったく同じです。',
        mistakes={
            'no_sqrt': '平方根 √ᾱ_t と √(1 − ᾱ_t) を使ってください：ᾱ_t は分散の割合で、x0 と ε '
                       'の重みは標準偏差です。',
            'swapped': '信号とノイズが入れ替わっています：ᾱ_t は信号の割合（t = 0 で 1 に近い）なので、√ᾱ_t '
                       'を x0 に掛けます。',
            'noise_no_sqrt': 'ノイズの重みにも平方根が要ります：√(1 − ᾱ_t)。',
            'off_by_one': 'タイムステップが 1 つずれています：`alphas_cumprod` は t '
                          'そのもので引いてください（タイムステップは 0 から数えます）。',
        },
    ),
)

# --------------------------------------------------------------------------- 1.5 the noise level σ


def _noise_level_cases(pipe):
    return [Case((_schedule(pipe),), "this model's alphas_cumprod")]


NOISE_LEVEL = Exercise(
    id="1.5",
    title="The noise level σ_t of every timestep",
    name="noise_level",
    solution_code='''
def noise_level(alphas_cumprod):
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()  # noise-to-signal ratio of each timestep
''',
    hint_text="σ_t is a ratio of standard deviations: the noise's √(1 − ᾱ_t) over the signal's √ᾱ_t. "
              "Work on the whole tensor at once.",
    cases=_noise_level_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("no_sqrt", "Take the square root: (1 − ᾱ_t) / ᾱ_t is a ratio of variances, σ_t one of "
                "standard deviations.", lambda a: (1 - a) / a),
        Mistake("inverted", "The ratio is upside down: σ_t is noise over signal, so it grows with t "
                "(small at t = 0, about 14.6 for SD at t = 999).", lambda a: (a / (1 - a)).sqrt()),
        Mistake("noise_only", "That is only the noise's standard deviation √(1 − ᾱ_t); divide it by the "
                "signal's √ᾱ_t.", lambda a: (1 - a).sqrt()),
    ],
    passed_message="Right: these are the σ values Euler-type schedulers step through.",
    ja=dict(
        title='すべてのタイムステップのノイズレベル σ_t',
        hint='σ_t は標準偏差の比です：ノイズの √(1 − ᾱ_t) を信号の √ᾱ_t で割ります。'
             'テンソル全体を一度に計算しましょう。',
        passed='正解です：これが Euler 系のスケジューラーがたどる σ の値です。',
        mistakes={
            'no_sqrt': '平方根を取ってください：(1 − ᾱ_t) / ᾱ_t は分散の比で、σ_t は標準偏差の比です。',
            'inverted': '比が逆さまです：σ_t はノイズ÷信号なので t とともに増えます（t = 0 で小さく、SD では '
                        't = 999 で約 14.6）。',
            'noise_only': 'それはノイズの標準偏差 √(1 − ᾱ_t) だけです。信号の √ᾱ_t で割ってください。',
        },
    ),
)

# --------------------------------------------------------------------------- 1.6 slerp


def _slerp_cases(pipe):
    shape = (1, pipe.unet.config.in_channels, 8, 8)
    a, b = seeded_randn(shape, 0), seeded_randn(shape, 1)
    return [Case((a, b, t), f"two noises and t = {t}") for t in (0.25, 0.5, 0.9)]


def _angle(a, b):
    return torch.acos((a * b).sum() / (a.norm() * b.norm()))


def _unnormalised(a, b, t):
    theta = torch.acos((a * b).sum())
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


SLERP = Exercise(
    id="1.6",
    title="Spherical interpolation between two noises",
    name="slerp",
    solution_code='''
import torch


def slerp(a, b, t):
    cos_theta = (a * b).sum() / (a.norm() * b.norm())  # cosine of the angle between a and b
    theta = torch.acos(cos_theta)
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
''',
    hint_text="First the angle θ: its cosine is a·b / (‖a‖ ‖b‖), with `(a * b).sum()` and `.norm()`; "
              "`torch.acos` gives θ. Then weigh a by sin((1 − t)θ)/sin θ and b by sin(tθ)/sin θ.",
    cases=_slerp_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("lerp", "That is lerp, the straight line (1 − t)·a + t·b: it cuts through the sphere where real "
                "noise lives and shortens it. Use the sine weights.", lambda a, b, t: (1 - t) * a + t * b),
        Mistake("swapped", "At t = 0 slerp must give a and at t = 1 b: your two weights are the other way round.",
                lambda a, b, t: (torch.sin(t * _angle(a, b)) * a + torch.sin((1 - t) * _angle(a, b)) * b)
                / torch.sin(_angle(a, b))),
        Mistake("unnormalised", "θ is the angle between a and b: divide the dot product by both lengths before "
                "`torch.acos`, which only takes values in [−1, 1].", _unnormalised),
    ],
    passed_message="Right: it matches `sdcourse.latents.slerp`, and every point keeps the length of real noise.",
    ja=dict(
        title='2 つのノイズの間の球面線形補間',
        hint='まず角度 θ：その余弦は a·b / (‖a‖ ‖b‖) で、`(a * b).sum()` と '
             '`.norm()` で求められ、`torch.acos` が θ を返します。次に a に '
             'sin((1 − t)θ)/sin θ、b に sin(tθ)/sin θ の重みを掛けます。',
        passed='正解です：`sdcourse.latents.slerp` と一致し、'
               'どの点も本物のノイズの長さを保ちます。',
        mistakes={
            'lerp': 'それは lerp、直線 (1 − t)·a + t·b です：本物のノイズがある球面の内側を通り、'
                    '長さが縮みます。sin の重みを使ってください。',
            'swapped': 'slerp は t = 0 で a、t = 1 で b を返す必要があります：2 '
                       'つの重みが逆になっています。',
            'unnormalised': 'θ は a と b の間の角度です：`torch.acos` は [−1, 1] '
                            'の値しか受け取らないので、その前に内積を両方の長さで割ってください。',
        },
    ),
)


EXERCISES = [ATTENTION, LATENT_SHAPE, TO_LATENTS, ADD_NOISE, NOISE_LEVEL, SLERP]
