"""mini-SD training scripts: a few steps of every stage, resume, export, load."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file

from sdcourse import grounding, models, train_mini, world
from sdcourse.tokenizer import load_tokenizer
from sdcourse.train_mini import MiniTrainConfig

EMBEDDING = "embeddings.token_embedding.weight"


def tiny_config(run_dir, **overrides) -> MiniTrainConfig:
    settings = dict(
        run_dir=str(run_dir), num_scenes=64, vae_steps=4, vae_batch_size=2, base_steps=4, refine_steps=3, layout_steps=3,
        settle_steps=2, words_steps=2, batch_size=2,
        variant_steps={"inpaint": 2, "depth": 2, "upscale": 2}, checkpoint_every=100, warmup_steps=2,
        layout_mirror_min_timestep=0,  # a few steps draw few timesteps ≥ 800: mirror and ground at all of them
    )
    return MiniTrainConfig(**{**settings, **overrides})


def weights(folder):
    return load_file(next(folder.glob("*.safetensors")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The shipped family trained a few steps and exported to `before_words`, laid out like assets/mini-sd; then
    continued by the words stage and exported again to `assets`."""
    root = tmp_path_factory.mktemp("mini")
    config = tiny_config(root / "run")
    before = train_mini.train(config, assets_dir=root / "before_words")
    result = train_mini.train(config, stages=train_mini.STAGES, assets_dir=root / "assets")  # resumed: words only
    return root, {**result, "seconds": {**before["seconds"], **result["seconds"]}}


def test_every_stage_runs_and_exports_the_diffusers_layout(trained):
    root, result = trained
    assert result["finished"] and set(result["seconds"]) == {*train_mini.FAMILY_STAGES, "words"}
    assets = root / "assets"
    index = json.loads((assets / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for folder, in_channels in [("unet", 4), ("unet_inpaint", 9), ("unet_depth", 5), ("unet_upscale", 7)]:
        config = json.loads((assets / folder / "config.json").read_text())
        assert config["in_channels"] == in_channels
        assert all(v.dtype == torch.float16 for v in weights(assets / folder).values())
    assert json.loads((assets / "unet_upscale" / "config.json").read_text())["num_class_embeds"] == 1000
    assert not list(assets.rglob("*.bin")) and not list(assets.rglob("*.pt"))
    card = (assets / "README.md").read_text()
    unet_parameters = sum(t.numel() for t in weights(assets / "unet").values())
    assert f"{unet_parameters / 1e6:.2f} M" in card and "| inpaint | `unet_inpaint/`" in card


def test_refine_layout_and_settle_continue_the_base_with_fuller_captions_the_x0_floor_and_pyramid_noise(trained):
    root, _ = trained
    run = root / "run"
    base, refine, layout, settle, inpaint = (
        json.loads((run / stage / "final" / "log.json").read_text())
        for stage in ("base", "refine", "layout", "settle", "inpaint")
    )
    said = lambda log: (log["p_mention_size"], log["p_mention_position"], log["snr_floor"], log["pyramid_noise_discount"])
    assert said(base) == (0.4, 0.6, 0.0, 0.0)
    assert said(refine) == (0.7, 0.8, 0.2, 0.0)
    assert said(layout) == (0.7, 0.9, 0.2, 0.8) and layout["lr"] == refine["lr"] / 2
    assert said(settle) == (0.7, 0.9, 0.2, 0.0) and settle["lr"] == refine["lr"] / 4  # white noise again
    assert said(inpaint) == (0.7, 0.8, 0.2, 0.0)  # pyramid noise hurt the variants
    assert layout["steps"] == 3 and settle["steps"] == 2 and layout["device"] == "cpu"
    # Only the layout stage mirrors noisy latents and grounds the position words.
    assert (layout["p_mirror"], layout["mirror_min_timestep"], layout["grounding_weight"]) == (0.5, 0, 0.05)
    assert 0 < layout["final_grounding_loss"] < 1
    assert all(log["p_mirror"] == 0 and log["grounding_weight"] == 0 for log in (base, refine, settle, inpaint))
    assert layout["grounded_words"] == sorted(world.POSITIONS) and not layout["grounding_per_area"]
    # ... and draws more two-object scenes, more of them at high noise; settle draws more of them at every noise level.
    assert (layout["p_two_objects"], layout["p_two_high_noise"], layout["high_noise_min_timestep"]) == (0.5, 0.5, 600)
    assert (settle["p_two_objects"], settle["p_two_high_noise"]) == (0.8, 0)
    assert all(log["p_two_objects"] == 0 and log["p_two_high_noise"] == 0 for log in (base, refine, inpaint))
    # After refine the text encoder is frozen but for the embeddings of the five position words, which
    # the layout stage learns: captions without them encode exactly as with refine's text encoder.
    assert not any((run / stage / "final" / "text_encoder").exists() for stage in ("settle", "inpaint"))
    refine_text, layout_text = (weights(run / stage / "final" / "text_encoder") for stage in ("refine", "layout"))
    assert [k for k in refine_text if not torch.equal(refine_text[k], layout_text[k])] == [EMBEDDING]
    moved = (refine_text[EMBEDDING] != layout_text[EMBEDDING]).any(dim=1).nonzero().flatten().tolist()
    assert layout["text_words"] == list(world.POSITIONS)
    position_ids = {ids[0] for ids in load_tokenizer()(list(world.POSITIONS), add_special_tokens=False).input_ids}
    assert moved and set(moved) <= position_ids  # the words its few captions said
    # Exported before the words stage, the family ships layout's text encoder and settle's UNet, which moved away
    # from the layout stage's; with it, the words stage's text encoder and UNet, and layout's text encoder for the
    # variants, which were trained before the words stage changed it.
    layout_unet, settle_unet = weights(run / "layout" / "final" / "unet"), weights(run / "settle" / "final" / "unet")
    assert settle_unet.keys() == layout_unet.keys()
    assert not all(torch.equal(settle_unet[k], layout_unet[k]) for k in settle_unet)
    for assets, folder, stage in [("before_words", "text_encoder", "layout"), ("before_words", "unet", "settle"),
                                  ("assets", "text_encoder", "words"), ("assets", "unet", "words"),
                                  ("assets", "text_encoder_variants", "layout")]:
        shipped = weights(root / assets / folder)
        trained_last = weights(run / stage / "final" / folder.removesuffix("_variants"))
        assert all(torch.equal(shipped[k], trained_last[k].half()) for k in shipped), (assets, folder)
    assert not (root / "before_words" / "text_encoder_variants").exists()
    card = (root / "assets" / "README.md").read_text()
    assert "| refine | `unet/` UNet2DConditionModel" in card and "x0 weight ≥ 0.2 | 70% / 80% |" in card
    assert "| layout | `unet/` UNet2DConditionModel" in card
    assert ("pyramid noise 0.8; 50% mirrored at t ≥ 0; position grounding 0.05; 50% of each batch redrawn as two-object "
            "scenes, 50% of those at t ≥ 600 | 70% / 90% |") in card
    assert "| settle | `unet/` UNet2DConditionModel" in card
    assert "x0 weight ≥ 0.2; 80% of each batch redrawn as two-object scenes | 70% / 90% |" in card
    assert card.count("redrawn as two-object") == 4  # the layout and settle rows, and the words stage's two
    assert "| words | `text_encoder/` CLIPTextModel" in card and "| words | `unet/` UNet2DConditionModel" in card
    assert "the text encoder's last 3 transformer layers" in card and "`text_encoder_variants/`" in card
    before_words = (root / "before_words" / "README.md").read_text()
    assert "| words |" not in before_words and "words stage" not in before_words
    upscale = json.loads((run / "upscale" / "final" / "log.json").read_text())
    assert (upscale["upscale_p_low_noise"], upscale["upscale_low_noise_max"]) == (0.5, 50)
    assert "x0 weight ≥ 0.2; low-res noise ≤ 50 in 50% | 70% / 80% |" in card  # the upscale row only
    assert card.count("low-res noise") == 1


def test_a_variant_without_its_starting_stage_says_which_stage_to_train(tmp_path):
    with pytest.raises(ValueError, match="'inpaint' starts from the finished 'refine' stage.*--stages"):
        train_mini.train(tiny_config(tmp_path / "run"), stages=("vae", "inpaint"))


def test_pyramid_noise_has_unit_spread_and_much_more_coarse_structure_than_white_noise():
    shape = (64, 4, 16, 16)
    white = train_mini.training_noise(shape, torch.Generator().manual_seed(0), offset=0.0)
    pyramid = train_mini.training_noise(shape, torch.Generator().manual_seed(0), offset=0.0, pyramid_discount=0.8)
    assert torch.equal(white, torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(pyramid.std(dim=(1, 2, 3)), torch.ones(64))  # each example: unit spread
    # Means over 8×8 quarters: white noise varies by 1/64 there; pyramid noise hides the layout too.
    coarse_var = lambda noise: torch.nn.functional.avg_pool2d(noise, 8).var().item()
    assert coarse_var(white) < 0.03 and coarse_var(pyramid) > 10 * coarse_var(white)


@pytest.mark.parametrize("task", models.TASKS)
def test_exported_family_loads_through_load_pipeline(trained, monkeypatch, task):
    root, _ = trained
    monkeypatch.setattr(models, "MINI_DIR", root / "assets")
    pipe = models.load_pipeline("mini", task=task, device="cpu")
    assert pipe.unet.config.in_channels == models.UNET_IN_CHANNELS[task]
    assert pipe.vae.dtype == torch.float32  # fp16 on disk, fp32 on CPU
    # Text-to-image reads the words stage's text encoder, the variants the one they were trained with.
    folder = "text_encoder" if task in ("text2img", "img2img") else "text_encoder_variants"
    on_disk = weights(root / "assets" / folder)
    assert all(torch.equal(v.half(), on_disk[k]) for k, v in pipe.text_encoder.state_dict().items() if k in on_disk)


def test_variants_start_from_the_base_unet_with_zeroed_extra_channels():
    torch.manual_seed(0)
    base = UNet2DConditionModel(**train_mini.unet_config())
    inpaint = train_mini.expand_conv_in(base, 9)
    assert torch.equal(inpaint.conv_in.weight[:, :4], base.conv_in.weight)
    assert inpaint.conv_in.weight[:, 4:].abs().sum() == 0
    latents, text = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 64)
    extra = torch.randn(1, 5, 16, 16)
    with torch.no_grad():
        same = inpaint(torch.cat([latents, extra], 1), 10, text).sample
        expected = base(latents, 10, text).sample
    assert torch.allclose(same, expected, atol=1e-5)


def test_an_interrupted_stage_resumes_to_the_same_weights(tmp_path):
    """Stop after 2 steps, run again: identical to one uninterrupted run (data order and noise included,
    and the layout stage's mirrored examples and grounding)."""
    stages = ("vae", "base", "refine", "layout")
    straight = train_mini.train(tiny_config(tmp_path / "a"), stages=stages)
    assert straight["finished"]
    first = train_mini.train(tiny_config(tmp_path / "b"), stages=stages, max_steps=2)
    assert not first["finished"] and (tmp_path / "b" / "vae" / "checkpoint" / "state.safetensors").exists()
    while not train_mini.train(tiny_config(tmp_path / "b"), stages=stages, max_steps=3)["finished"]:
        pass
    for part in ["vae/final", "base/final/unet", "base/final/text_encoder", "layout/final/unet", "layout/final/text_encoder"]:
        a, b = weights(tmp_path / "a" / part), weights(tmp_path / "b" / part)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_latent_rescaling_keeps_the_autoencoder_and_sets_unit_spread():
    torch.manual_seed(0)
    vae = AutoencoderKL(**train_mini.vae_config()).eval()
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = vae.encode(images).latent_dist
        decoded_before = vae.decode(before.mean).sample
        train_mini.set_latent_spread(vae, before.mean.std().item())
        after = vae.encode(images).latent_dist
        decoded_after = vae.decode(after.mean).sample
    assert vae.config.scaling_factor == train_mini.SCALING_FACTOR
    assert abs((after.mean * vae.config.scaling_factor).std().item() - 1.0) < 1e-3
    assert torch.allclose(after.std / after.mean.std(), before.std / before.mean.std(), rtol=1e-3)
    assert torch.allclose(decoded_after, decoded_before, atol=1e-4)


def test_mirrored_examples_are_the_noisy_placed_ones_and_still_aim_at_the_unmirrored_image():
    from diffusers import DDPMScheduler

    assert train_mini.mirror_axis("a red circle on the left and a blue square on the right, on a black background") == -1
    assert train_mini.mirror_axis("a small red circle at the bottom, on a black background") == -2
    for unplaced in ("a red circle in the center, on a black background", "a red circle on a black background", ""):
        assert train_mini.mirror_axis(unplaced) is None
    captions = ["a red circle on the left, on a black background", "a red circle at the top, on a black background",
                "a red circle on a black background", "a red circle on the left, on a black background"]
    clean = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([900, 850, 900, 700])
    signal = train_mini.mirrored_signal(clean, captions, timesteps, draws=torch.zeros(4), p_mirror=0.5, min_timestep=800)
    assert torch.equal(signal[0], clean[0].flip(-1)) and torch.equal(signal[1], clean[1].flip(-2))
    assert torch.equal(signal[2:], clean[2:])  # unplaced; not noisy enough
    not_drawn = train_mini.mirrored_signal(clean, captions, timesteps, draws=torch.ones(4), p_mirror=0.5, min_timestep=800)
    assert torch.equal(not_drawn, clean)
    # The target noise is the one whose removal from the mirrored noisy latents gives the unmirrored x0.
    scheduler = DDPMScheduler(**train_mini.noise_scheduler_config())
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    noisy = scheduler.add_noise(signal, noise, timesteps)
    target = train_mini.epsilon_target(scheduler, noise, signal, clean, timesteps)
    alphas_cumprod = scheduler.alphas_cumprod[timesteps][:, None, None, None]
    torch.testing.assert_close((noisy - (1 - alphas_cumprod).sqrt() * target) / alphas_cumprod.sqrt(), clean)
    assert torch.equal(target[2:], noise[2:]) and not torch.allclose(target[:2], noise[:2])


def test_the_layout_stage_draws_more_two_object_scenes_and_more_of_them_at_high_noise():
    rng = np.random.default_rng(0)
    scenes = world.sample_scenes(2000, seed=0)
    two = np.array([i for i, scene in enumerate(scenes) if len(scene.objects) == 2])
    assert 0.25 < len(two) / len(scenes) < 0.35  # the data's share
    index = train_mini.more_two_object_scenes(rng.integers(0, len(scenes), 20000), two, 0.5, rng)
    is_two = np.isin(index, two)
    assert 0.62 < is_two.mean() < 0.68  # half redrawn as two-object scenes, plus the others' 30 %
    timesteps = train_mini.more_high_noise(rng.integers(0, 1000, 20000), is_two, 0.5, 600, rng)
    assert 0.68 < np.mean(timesteps[is_two] >= 600) < 0.72  # half redrawn there, plus the others' 40 %
    assert 0.38 < np.mean(timesteps[~is_two] >= 600) < 0.42  # one-object examples keep uniform timesteps
    assert timesteps.min() == 0 and timesteps.max() == 999


def test_upscaler_noise_levels_cover_the_whole_range_and_favour_the_pipelines_low_levels():
    rng = np.random.default_rng(0)
    config = MiniTrainConfig()
    levels = train_mini.upscale_noise_levels(rng, 20000, config.upscale_p_low_noise, config.upscale_low_noise_max)
    assert levels.min() == 0 and levels.max() == train_mini.MAX_NOISE_LEVEL
    # The pipeline's default noise_level is 20: about a quarter of examples at or below it, not 6 %.
    assert 0.20 < np.mean(levels <= 20) < 0.27
    uniform = train_mini.upscale_noise_levels(rng, 20000, p_low_noise=0.0, low_noise_max=50)
    assert 0.04 < np.mean(uniform <= 20) < 0.08
    only_low = train_mini.upscale_noise_levels(rng, 5000, p_low_noise=1.0, low_noise_max=50)
    assert only_low.min() == 0 and only_low.max() == 50


def test_a_stage_continues_the_shipped_family_and_exports_it_whole(trained, tmp_path):
    """`--from-shipped`: the words stage continues a shipped family (its unet/ is settle's)."""
    import shutil

    root, _ = trained
    shipped = tmp_path / "shipped"
    shutil.copytree(root / "before_words", shipped)
    training = json.loads((shipped / "training.json").read_text())
    with pytest.raises(ValueError, match="'inpaint' starts from 'refine'"):
        train_mini.start_from_shipped(tiny_config(tmp_path / "run0"), "inpaint", shipped)

    config = tiny_config(tmp_path / "run")
    train_mini.start_from_shipped(config, "words", shipped)
    start = weights(config.path / "settle" / "final" / "unet")
    assert all(torch.equal(start[k].half(), v) for k, v in weights(shipped / "unet").items())
    result = train_mini.train(config, stages=("words",), assets_dir=tmp_path / "out")
    assert result["finished"] and set(result["seconds"]) == {"vae", "words"}
    out = json.loads((tmp_path / "out" / "training.json").read_text())
    assert set(out["stages"]) == set(train_mini.STAGES)  # the shipped logs kept, the new stage's added
    assert out["stages"]["upscale"] == training["stages"]["upscale"]
    new_unet = weights(tmp_path / "out" / "unet")
    assert not all(torch.equal(new_unet[k], v) for k, v in weights(shipped / "unet").items())
    # The words stage continues settle's white noise with every content word grounded per pixel at every
    # timestep, the word "background" once more with a weight of its own.
    settle, words = out["stages"]["settle"], out["stages"]["words"]
    assert (words["p_mention_size"], words["p_mention_position"]) == (0.7, 0.8) and words["p_two_objects"] == 0.6
    assert words["lr"] == settle["lr"] and words["pyramid_noise_discount"] == 0 and words["grounding_per_area"]
    assert (words["grounding_weight"], words["grounding_min_timestep"], words["p_mirror"]) == (0.1, 0, 0)
    assert set(words["grounded_words"]) == {*world.COLOURS, *world.ALL_SHAPES, world.CLASS_NOUN, *world.SIZES,
                                            *world.POSITIONS, "background"}
    assert words["background_grounding_weight"] == 0.15 and 0 < words["final_background_grounding_loss"] < 1
    without_colour = train_mini.recipe(MiniTrainConfig(words_background_colour=False), "words")
    assert without_colour.grounded_words == grounding.OBJECT_WORDS  # the background's colour word left alone
    assert 0 < words["final_grounding_loss"] < 1
    # Once continued, the shipped unet/ is the words stage's: nothing continues settle from it any more.
    with pytest.raises(ValueError, match="the shipped unet/ is the 'words' stage's"):
        train_mini.start_from_shipped(tiny_config(tmp_path / "run2"), "words", tmp_path / "out")


def test_the_words_stage_can_train_the_text_encoders_last_layers_only(trained, tmp_path):
    """`words_text_layers`: the last layers and the final norm change, the embeddings and earlier layers
    do not, and the exported family's text encoder is the words stage's."""
    root, _ = trained
    config = tiny_config(tmp_path / "run", words_text_layers=1)
    train_mini.start_from_shipped(config, "words", root / "before_words")
    train_mini.train(config, stages=("words",), assets_dir=tmp_path / "out")
    before, after = weights(root / "before_words" / "text_encoder"), weights(tmp_path / "out" / "text_encoder")
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    last = len({k.split(".")[2] for k in before if k.startswith("encoder.layers.")}) - 1
    assert changed and all(k.startswith(f"encoder.layers.{last}.") or k.startswith("final_layer_norm.") for k in changed)
    assert EMBEDDING not in changed
    log = json.loads((tmp_path / "out" / "training.json").read_text())["stages"]["words"]
    assert log["text_layers"] == 1
