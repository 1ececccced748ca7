"""Chapter 5 exercises: a rare one-token identifier, the prior-preservation loss, LoRA's size, the training target."""

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from .core import Case, Exercise, Mistake
from .inputs import seeded_randn

# --------------------------------------------------------------------------- 5.1 a rare identifier


def _identifier_cases(pipe):
    tokenizer = pipe.tokenizer
    return [Case((tokenizer, words), f"candidates {words}") for words in
            (["shape", "star", "sks", "zwx"], ["vkz", "cat", "photo"], ["xyzzyq", "olis", "bnha"])]


def _ids(tokenizer, word):
    return tokenizer(word, add_special_tokens=False).input_ids


def _single(tokenizer, words):
    return [w for w in words if len(_ids(tokenizer, w)) == 1]


RARE_IDENTIFIER = Exercise(
    id="5.1",
    title="Pick a rare one-token identifier",
    name="rare_identifier",
    solution_code='''
def rare_identifier(tokenizer, candidates):
    one_token = [word for word in candidates if len(tokenizer(word, add_special_tokens=False).input_ids) == 1]
    # BPE merges frequent pairs first, so the largest id is the rarest token
    return max(one_token, key=lambda word: tokenizer(word, add_special_tokens=False).input_ids[0])
''',
    hint_text="Tokenize each candidate *without* the start and end tokens (`add_special_tokens=False`); keep the "
              "words that are exactly one token; of those, the rarest is the one with the largest id.",
    cases=_identifier_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("start_token", "Every candidate's ids begin with the start token (49406), so comparing them "
                "compares nothing: tokenize with `add_special_tokens=False`.",
                lambda tok, words: _single(tok, words)[0]),
        Mistake("lowest_id", "The rarest token has the *largest* id: CLIP's BPE merged the most frequent pairs first.",
                lambda tok, words: min(_single(tok, words), key=lambda w: _ids(tok, w)[0])),
        Mistake("split_words", "'vkz' is two tokens ('v', 'kz</w>'): an identifier must be one token, or each piece "
                "brings a meaning of its own.", lambda tok, words: max(words, key=lambda w: max(_ids(tok, w)))),
    ],
    passed_message="Right: one token, and nearly unused before training, which is why the community settled on 'sks'.",
    ja=dict(
        title='まれな 1 トークンの識別子を選ぶ',
        hint='各候補を開始・終了トークン *なしで* '
             'トークン化し（`add_special_tokens=False`）、ちょうど 1 '
             'トークンになる単語を残しましょう。その中で最もまれなのは ID が最も大きいものです。',
        passed="正解です：1 トークンで、学習前にはほとんど使われていません。コミュニティが 'sks' "
               'に落ち着いたのはこのためです。',
        mistakes={
            'start_token': 'どの候補の ID も開始トークン（49406）で始まるので、比べても何も比べていません：'
                           '`add_special_tokens=False` でトークン化してください。',
            'lowest_id': '最もまれなトークンは ID が *最も大きい* ものです：CLIP の BPE '
                         'は最も頻繁な組から先に結合しました。',
            'split_words': "'vkz' は 2 つのトークン（'v'、'kz</w>'）です：識別子は 1 "
                           'トークンでなければなりません。さもないと各断片がそれぞれの意味を持ち込みます。',
        },
    ),
)

# --------------------------------------------------------------------------- 5.2 the prior-preservation loss


def _loss_cases():
    pred, target = seeded_randn((4, 4, 8, 8), 0), seeded_randn((4, 4, 8, 8), 1) * 0.5
    return [Case((pred, target, weight), f"a batch of 2 instance + 2 class examples, prior_loss_weight={weight}")
            for weight in (2.0, 1.0)]


def _halves(pred, target):
    (pi, pp), (ti, tp) = pred.chunk(2), target.chunk(2)
    return F.mse_loss(pi, ti), F.mse_loss(pp, tp)


PRIOR_LOSS = Exercise(
    id="5.2",
    title="The DreamBooth loss with prior preservation",
    name="dreambooth_loss",
    solution_code='''
import torch.nn.functional as F


def dreambooth_loss(model_pred, target, prior_loss_weight):
    pred_instance, pred_prior = model_pred.chunk(2)  # the batch is [instance examples, class examples]
    target_instance, target_prior = target.chunk(2)
    instance_loss = F.mse_loss(pred_instance, target_instance)
    prior_loss = F.mse_loss(pred_prior, target_prior)  # keeps the class as the base model drew it
    return instance_loss + prior_loss_weight * prior_loss
''',
    hint_text="Split predictions and targets with `.chunk(2)`: the first half are the subject's pictures, the "
              "second the class images. Take the mean squared error of each half and weigh the class half by "
              "`prior_loss_weight`.",
    cases=_loss_cases,
    mistakes=[
        Mistake("weight_on_instance", "`prior_loss_weight` (λ) weighs the class images' loss, not the subject's.",
                lambda p, t, w: _halves(p, t)[1] + w * _halves(p, t)[0]),
        Mistake("plain_mse", "Split the batch: subject pictures first, class images second, and weigh the class half "
                "by prior_loss_weight. One MSE over the whole batch ignores λ.", lambda p, t, w: F.mse_loss(p, t)),
        Mistake("summed", "Use the mean squared error (F.mse_loss's default reduction), as in pre-training; a sum "
                "grows with the image size and the batch.",
                lambda p, t, w: F.mse_loss(*[x.chunk(2)[0] for x in (p, t)], reduction="sum")
                + w * F.mse_loss(*[x.chunk(2)[1] for x in (p, t)], reduction="sum")),
    ],
    passed_message="Right: this is the loss `sdcourse.dreambooth` and diffusers' train_dreambooth.py minimise.",
    ja=dict(
        title='事前保存（prior preservation）付きの DreamBooth の損失',
        hint='予測と目標を `.chunk(2)` で分けましょう：前半は対象の写真、後半はクラス画像です。'
             'それぞれの半分の平均二乗誤差を取り、クラスの半分に `prior_loss_weight` '
             'の重みを掛けます。',
        passed='正解です：これが `sdcourse.dreambooth` と diffusers の '
               'train_dreambooth.py が最小化する損失です。',
        mistakes={
            'weight_on_instance': '`prior_loss_weight`（λ）は対象ではなく、クラス画像の損失に掛ける重みです。',
            'plain_mse': 'バッチを分けてください：対象の写真が先、クラス画像が後で、クラスの半分に '
                         'prior_loss_weight の重みを掛けます。バッチ全体の MSE 1 つでは λ '
                         'が無視されます。',
            'summed': '事前学習と同じく平均二乗誤差（F.mse_loss の既定の reduction）を使ってください。'
                      '和は画像サイズとバッチとともに大きくなります。',
        },
    ),
)

# --------------------------------------------------------------------------- 5.3 how many parameters LoRA trains

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _lora_cases(pipe):
    return [Case((pipe.unet, 4, TARGETS), f"rank 4 on {TARGETS}"),
            Case((pipe.unet, 16, ["to_q", "to_v"]), "rank 16 on ['to_q', 'to_v']")]


def _lora_count(unet, rank, targets, per_layer, every_linear=False):
    total = 0
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and (every_linear or any(name.endswith(t) for t in targets)):
            total += per_layer(module, rank)
    return total


LORA_SIZE = Exercise(
    id="5.3",
    title="How many parameters LoRA trains",
    name="lora_parameter_count",
    solution_code='''
import torch


def lora_parameter_count(unet, rank, target_modules):
    count = 0
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(target) for target in target_modules):
            count += rank * (module.in_features + module.out_features)  # A: rank × in, B: out × rank
    return count
''',
    hint_text="Walk `unet.named_modules()`; for every `torch.nn.Linear` whose name ends with one of "
              "`target_modules`, LoRA adds A (rank × in_features) and B (out_features × rank).",
    cases=_lora_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("full_matrix", "That is rank full in × out matrices. LoRA's update is B·A, with A of rank × in_features "
                "and B of out_features × rank parameters.",
                lambda u, r, t: _lora_count(u, r, t, lambda m, r: r * m.in_features * m.out_features)),
        Mistake("a_only", "Count both matrices: A has rank × in_features parameters, B out_features × rank.",
                lambda u, r, t: _lora_count(u, r, t, lambda m, r: r * m.in_features)),
        Mistake("every_linear", "Only the layers named in `target_modules` get LoRA matrices.",
                lambda u, r, t: _lora_count(u, r, t, lambda m, r: r * (m.in_features + m.out_features), every_linear=True)),
    ],
    passed_message="Right: the same count as PEFT's adapter, a small fraction of the UNet's parameters.",
    ja=dict(
        title='LoRA が学習するパラメータの数',
        hint='`unet.named_modules()` をたどりましょう。名前が '
             '`target_modules` のどれかで終わる `torch.nn.Linear` ごとに、'
             'LoRA は A（rank × in_features）と B（out_features × rank）'
             'を加えます。',
        passed='正解です：PEFT のアダプターと同じ数で、UNet のパラメータのごく一部です。',
        mistakes={
            'full_matrix': 'それは in × out の行列を rank 個数えたものです。LoRA の更新は B·A で、A は '
                           'rank × in_features、B は out_features × rank '
                           '個のパラメータを持ちます。',
            'a_only': '両方の行列を数えてください：A は rank × in_features、B は '
                      'out_features × rank 個のパラメータです。',
            'every_linear': 'LoRA の行列を持つのは `target_modules` に名前のある層だけです。',
        },
    ),
)

# --------------------------------------------------------------------------- 5.4 what the UNet is trained to predict


def _target_cases(pipe):
    epsilon = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")
    velocity = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    latents, noise = seeded_randn((2, 4, 8, 8), 0), seeded_randn((2, 4, 8, 8), 1)
    timesteps = torch.tensor([100, 800])
    return [Case((epsilon, latents, noise, timesteps), "prediction_type='epsilon' (SD 1.x, mini-SD)"),
            Case((velocity, latents, noise, timesteps), "prediction_type='v_prediction' (SD 2.1 768 px, x4 upscaler)")]


TRAINING_TARGET = Exercise(
    id="5.4",
    title="The training target: noise or velocity",
    name="training_target",
    solution_code='''
def training_target(scheduler, latents, noise, timesteps):
    if scheduler.config.prediction_type == "v_prediction":  # SD 2.x at 768 px, the x4 upscaler
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise  # "epsilon": the UNet predicts the noise itself
''',
    hint_text="Read `scheduler.config.prediction_type`: for \"epsilon\" the target is the noise; for "
              "\"v_prediction\" it is `scheduler.get_velocity(latents, noise, timesteps)`.",
    cases=_target_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("always_noise", "This scheduler says prediction_type='v_prediction': its model predicts the velocity, "
                "`scheduler.get_velocity(latents, noise, timesteps)`, as SD 2.1 (768 px) and the x4 upscaler do.",
                lambda sch, x, n, t: n),
        Mistake("always_velocity", "For prediction_type 'epsilon' the target is the noise itself.",
                lambda sch, x, n, t: sch.get_velocity(x, n, t)),
        Mistake("clean_latents", "The UNet is not trained to predict the clean latents here: for 'epsilon' it predicts "
                "the noise, for 'v_prediction' the velocity.", lambda sch, x, n, t: x),
    ],
    passed_message="Right: with this line the same training step trains SD 1.x and SD 2.x models.",
    ja=dict(
        title='学習の目標：ノイズか速度か',
        hint='`scheduler.config.prediction_type` を読みましょう：'
             '"epsilon" なら目標はノイズ、"v_prediction" なら '
             '`scheduler.get_velocity(latents, noise, timesteps)` '
             'です。',
        passed='正解です：この 1 行で、同じ学習ステップが SD 1.x と SD 2.x のモデルを学習します。',
        mistakes={
            'always_noise': "このスケジューラーは prediction_type='v_prediction' です：そのモデルは、"
                            'SD 2.1（768 px）や x4 アップスケーラーと同じく速度 '
                            '`scheduler.get_velocity(latents, noise, timesteps)` '
                            'を予測します。',
            'always_velocity': "prediction_type が 'epsilon' なら、目標はノイズそのものです。",
            'clean_latents': "ここでの UNet はきれいな潜在変数を予測するよう学習しません：'epsilon' ならノイズ、"
                             "'v_prediction' なら速度を予測します。",
        },
    ),
)

EXERCISES = [RARE_IDENTIFIER, PRIOR_LOSS, LORA_SIZE, TRAINING_TARGET]
