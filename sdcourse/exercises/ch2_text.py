"""Chapter 2 exercises: token positions, cross-attention by hand, a word's heat map, a swapped word."""

import torch

from ..attention import cross_attention_layers
from .core import Case, Exercise, Mistake
from .inputs import seeded_randn
from ..text import prompt_input_ids, token_and_position_embeddings

# --------------------------------------------------------------------------- 2.1 where a word sits


def _position_cases(pipe):
    tokenizer = pipe.tokenizer
    return [
        Case((tokenizer, "a large red circle on a blue background", "circle"), "'circle' in 'a large red circle on …'"),
        Case((tokenizer, "a zigzag on a blue background", "zigzag"), "'zigzag' in 'a zigzag on a blue background'"),
        Case((tokenizer, "a large red circle on a blue background", "a"), "'a' in 'a large red circle on a blue …'"),
    ]


def _find(ids, pieces, first_piece_only=False, first_only=False):
    positions = []
    for start in range(len(ids) - len(pieces) + 1):
        if ids[start:start + len(pieces)] == pieces:
            positions += [start] if first_piece_only else list(range(start, start + len(pieces)))
            if first_only:
                break
    return positions


def _pieces(tokenizer, word):
    return tokenizer(word, add_special_tokens=False).input_ids


TOKEN_POSITIONS = Exercise(
    id="2.1",
    title="The slots a word occupies",
    name="token_positions",
    solution_code='''
def token_positions(tokenizer, prompt, word):
    ids = tokenizer(prompt).input_ids  # slot 0 is the start token
    pieces = tokenizer(word, add_special_tokens=False).input_ids  # a word can be several tokens
    positions = []
    for start in range(len(ids) - len(pieces) + 1):
        if ids[start:start + len(pieces)] == pieces:  # every occurrence, every piece
            positions += range(start, start + len(pieces))
    return positions
''',
    hint_text="Tokenize the prompt with its special tokens (`tokenizer(prompt).input_ids`) and the word without "
              "them (`add_special_tokens=False`): the word may be several ids. Then look for that run of ids "
              "at every position of the prompt.",
    cases=_position_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("no_start_token", "Every slot is one too low: slot 0 holds the start token <|startoftext|>, so the "
                "first word sits in slot 1. Tokenize the prompt with its special tokens.",
                lambda tok, prompt, word: [p - 1 for p in _find(tok(prompt).input_ids, _pieces(tok, word))]),
        Mistake("first_piece_only", "'zigzag' is two tokens ('zig', 'zag</w>'): return the slot of every piece.",
                lambda tok, prompt, word: _find(tok(prompt).input_ids, _pieces(tok, word), first_piece_only=True)),
        Mistake("first_only", "'a' occurs twice in the prompt: return the slots of every occurrence.",
                lambda tok, prompt, word: _find(tok(prompt).input_ids, _pieces(tok, word), first_only=True)),
    ],
    passed_message="Right: these are the columns of the attention table that belong to the word.",
    ja=dict(
        title='単語が占めるスロット',
        hint='プロンプトは特殊トークン付きで（`tokenizer(prompt).input_ids`）、'
             '単語は特殊トークンなしで（`add_special_tokens=False`）トークン化しましょう：'
             '単語は複数の ID になることがあります。次に、その ID の並びをプロンプトのあらゆる位置で探します。',
        passed='正解です：これがアテンションの表のうち、その単語に属する列です。',
        mistakes={
            'no_start_token': 'どのスロットも 1 つ小さすぎます：スロット 0 には開始トークン <|startoftext|> '
                              'があるので、最初の単語はスロット 1 にあります。プロンプトは特殊トークン付きでトークン化してください。',
            'first_piece_only': "'zigzag' は 2 つのトークン（'zig'、'zag</w>'）です："
                                'すべての断片のスロットを返してください。',
            'first_only': "'a' はプロンプトに 2 回現れます：すべての出現のスロットを返してください。",
        },
    ),
)

# --------------------------------------------------------------------------- 2.2 cross-attention by hand


def _query_key(pipe, seed):
    layer = next(iter(cross_attention_layers(pipe.unet).values()))
    prompt_embeds = pipe.text_encoder(prompt_input_ids(pipe.tokenizer, "a red circle on a blue background")
                                      .to(pipe.device))[0]
    features = seeded_randn((1, 6 * 4, layer.to_q.in_features), seed).to(pipe.device, pipe.dtype)
    query = layer.head_to_batch_dim(layer.to_q(features))
    key = layer.head_to_batch_dim(layer.to_k(prompt_embeds))
    return query.float(), key.float()


def _attention_cases(pipe):
    return [Case(_query_key(pipe, 0), "the first cross-attention layer's query and key")]


def _softmax_of(scores, dim=-1):
    return torch.softmax(scores, dim=dim)


ATTENTION_WEIGHTS = Exercise(
    id="2.2",
    title="Cross-attention weights by hand",
    name="attention_weights",
    solution_code='''
import torch


def attention_weights(query, key):
    d = query.shape[-1]  # the size of one head
    scores = query @ key.transpose(-1, -2) / d ** 0.5  # (heads, positions, tokens)
    return torch.softmax(scores, dim=-1)  # each position divides its attention over the tokens
''',
    hint_text="query is (heads, positions, d) and key is (heads, 77, d): multiply query by key transposed in "
              "its last two dimensions, divide by √d, and take the softmax over the tokens.",
    cases=_attention_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("no_scale", "Divide the scores by √d (d = query.shape[-1]) before the softmax; without it the "
                "softmax is much too peaked.", lambda q, k: _softmax_of(q @ k.transpose(-1, -2))),
        Mistake("divide_by_d", "Divide by the square root of d, not by d itself.",
                lambda q, k: _softmax_of(q @ k.transpose(-1, -2) / q.shape[-1])),
        Mistake("wrong_dim", "Each image position divides its attention over the 77 tokens: take the softmax over "
                "the last dimension, so that every row sums to 1.",
                lambda q, k: _softmax_of(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-2)),
    ],
    passed_message="Right: the same table as diffusers' `get_attention_scores`, which is what "
                   "`attention.trace` records for the heat maps.",
    ja=dict(
        title='クロスアテンションの重みを手で計算する',
        hint='query は (heads, positions, d)、key は (heads, 77, d) '
             'です：query に、最後の 2 次元を転置した key を掛け、√d で割り、トークンについて '
             'softmax を取りましょう。',
        passed='正解です：diffusers の `get_attention_scores` と同じ表で、'
               '`attention.trace` がヒートマップのために記録するものです。',
        mistakes={
            'no_scale': 'softmax の前にスコアを √d（d = query.shape[-1]）で割ってください。'
                        'そうしないと softmax が鋭くなりすぎます。',
            'divide_by_d': 'd そのものではなく、d の平方根で割ってください。',
            'wrong_dim': '画像の各位置は 77 個のトークンに注意を配分します：最後の次元について softmax を取り、'
                         '各行の和が 1 になるようにしてください。',
        },
    ),
)

# --------------------------------------------------------------------------- 2.3 one word's heat map


def _heatmap_cases():
    weights = torch.softmax(seeded_randn((4, 6 * 4, 77), 0) * 3, dim=-1)
    return [Case((weights, 4, 6, 4), "4 heads on a 6×4 grid, token 4"),
            Case((weights, 1, 4, 6), "the same weights read as a 4×6 grid, token 1")]


WORD_HEATMAP = Exercise(
    id="2.3",
    title="One token's heat map",
    name="token_heatmap",
    solution_code='''
def token_heatmap(weights, token_index, height, width):
    column = weights[:, :, token_index]  # (heads, positions): how much each position looked at the token
    return column.mean(dim=0).reshape(height, width)  # average the heads, lay it out on the grid
''',
    hint_text="`weights` is (heads, height·width, 77). A token's map is its column, `weights[:, :, token_index]`; "
              "average it over the heads, then reshape to (height, width): positions run row by row.",
    cases=_heatmap_cases,
    mistakes=[
        Mistake("first_head", "Average all heads (`.mean(dim=0)`), not just the first one: each head looks for "
                "something else.", lambda w, i, h, wd: w[0, :, i].reshape(h, wd)),
        Mistake("summed", "Average the heads with `.mean(dim=0)`; a sum makes the map `heads` times too large.",
                lambda w, i, h, wd: w[:, :, i].sum(dim=0).reshape(h, wd)),
        Mistake("transposed", "The grid has `height` rows of `width` positions: reshape(height, width), not "
                "(width, height) transposed.", lambda w, i, h, wd: w[:, :, i].mean(dim=0).reshape(wd, h).T),
    ],
    passed_message="Right: upsampled to the image and scaled to [0, 1], this is a heat map like the chapter's.",
    ja=dict(
        title='1 つのトークンのヒートマップ',
        hint='`weights` は (heads, height·width, 77) です。'
             'トークンのマップはその列 `weights[:, :, token_index]` です。'
             'ヘッドについて平均してから (height, width) に reshape しましょう：位置は 1 '
             '行ずつ並んでいます。',
        passed='正解です：画像サイズに拡大して [0, 1] に正規化すれば、この章のようなヒートマップになります。',
        mistakes={
            'first_head': '最初のヘッドだけでなく、すべてのヘッドを平均してください（`.mean(dim=0)`）：'
                          'ヘッドごとに探すものが違います。',
            'summed': 'ヘッドは `.mean(dim=0)` で平均してください。和を取るとマップが `heads` '
                      '倍大きくなります。',
            'transposed': '格子は `width` 個の位置が `height` 行あります：reshape(height, '
                          'width) で、(width, height) を転置したものではありません。',
        },
    ),
)

# --------------------------------------------------------------------------- 2.4 swap a word inside the embedding


def _swap_cases(pipe):
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    cases = []
    for prompt, old, new in [("a red circle and a red square", "red", "yellow"),
                             ("a large red circle on a blue background", "circle", "square")]:
        input_ids = prompt_input_ids(tokenizer, prompt).to(pipe.device)
        token_embeds, _ = token_and_position_embeddings(encoder, input_ids)
        old_id, new_id = (_pieces(tokenizer, word)[0] for word in (old, new))
        new_row = encoder.get_input_embeddings().weight[new_id]
        cases.append(Case((token_embeds.float(), input_ids, old_id, new_row.float()), f"'{old}' → '{new}' in {prompt!r}"))
    return cases


def _replace(token_embeds, input_ids, old_id, new_row, first_only=False, add=False):
    out = token_embeds.clone()
    slots = (input_ids[0] == old_id).nonzero().flatten().tolist()
    for slot in slots[:1] if first_only else slots:
        out[0, slot] = out[0, slot] + new_row if add else new_row
    return out


SWAP_WORD = Exercise(
    id="2.4",
    title="Swap a word inside the token embeddings",
    name="swap_token",
    solution_code='''
import torch


def swap_token(token_embeds, input_ids, old_id, new_row):
    slots = (input_ids == old_id)[..., None]  # (batch, 77, 1): True where the old token sits
    return torch.where(slots, new_row, token_embeds)  # its row replaced, every other row kept
''',
    hint_text="`input_ids == old_id` marks the slots to change; add a last dimension with `[..., None]` so that "
              "it lines up with the embeddings, and let `torch.where` pick `new_row` there.",
    cases=_swap_cases,
    needs=("pipe",),
    mistakes=[
        Mistake("first_only", "'red' occurs twice: replace the token in every slot where it sits.",
                lambda e, ids, old, new: _replace(e, ids, old, new, first_only=True)),
        Mistake("added", "Replace the token's vector; adding the new one to it gives a mixture of both words.",
                lambda e, ids, old, new: _replace(e, ids, old, new, add=True)),
        Mistake("every_slot", "Only the slots whose id is `old_id` change; every other slot keeps its own vector.",
                lambda e, ids, old, new: new.expand_as(e).clone()),
    ],
    passed_message="Right: add the position embeddings, run the transformer (`text.encode_from_embeddings`), and "
                   "you get exactly the embeddings of the prompt with the new word typed in.",
    ja=dict(
        title='トークン埋め込みの中で単語を入れ替える',
        hint='`input_ids == old_id` が変えるべきスロットを示します。`[..., None]` '
             'で最後の次元を加えて埋め込みと形をそろえ、`torch.where` にそこで `new_row` '
             'を選ばせましょう。',
        passed='正解です：位置埋め込みを足して Transformer '
               'に通す（`text.encode_from_embeddings`）と、'
               '新しい単語を打ち込んだプロンプトの埋め込みとまったく同じになります。',
        mistakes={
            'first_only': "'red' は 2 回現れます：そのトークンがあるすべてのスロットで置き換えてください。",
            'added': 'トークンのベクトルを置き換えてください。新しいベクトルを足すと、2 つの単語が混ざったものになります。',
            'every_slot': '変わるのは ID が `old_id` のスロットだけです。ほかのスロットは自分のベクトルを保ちます。',
        },
    ),
)

EXERCISES = [TOKEN_POSITIONS, ATTENTION_WEIGHTS, WORD_HEATMAP, SWAP_WORD]
