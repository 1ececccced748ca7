"""DreamBooth trainer: config, bad input, training, exports that plain diffusers loads, resume.

Training runs on the tiny random pipeline (a step takes tens of milliseconds); the quality
bars on the shapes-world concept need mini-SD and are skipped until it is trained.
"""

import functools
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from sdcourse import cli, dreambooth, dreambooth_eval, world
from sdcourse.dreambooth import DreamBoothConfig, DreamBoothWarning, train_dreambooth
from sdcourse.models import mini_available
from sdcourse.testing import tiny_pipeline

LORA_FILE = "pytorch_lora_weights.safetensors"
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Instance images of the concept, a shared class-image cache, and the tiny model on disk."""
    root = tmp_path_factory.mktemp("dreambooth")
    dreambooth_eval.write_concept_images(root / "instance", n=4)
    tiny_pipeline().save_pretrained(root / "tiny")
    return root


@functools.cache
def tiny():
    """The tiny pipeline in memory (train_dreambooth copies it; loading it from disk takes longer)."""
    return tiny_pipeline()


def make_config(data, tmp_path, name="out", **changes) -> DreamBoothConfig:
    values = dict(
        model=tiny(), instance_data_dir=str(data / "instance"), class_data_dir=str(data / "class"),
        num_class_images=3, sample_batch_size=3, num_inference_steps=2, max_train_steps=6, train_batch_size=2,
        checkpointing_steps=100, learning_rate=1e-3, output_dir=str(tmp_path / name),
    )
    values.update(changes)
    return DreamBoothConfig(**values)


def written(tmp_path, name="out") -> list[str]:
    """What a run left under tmp_path for output_dir=tmp_path/name (output, run dir, hidden tmp folders)."""
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((name, f".{name}")))


def model_weights(output_dir: Path, lora: bool) -> dict:
    return load_file(str(Path(output_dir) / (LORA_FILE if lora else UNET_FILE)))


def sample(pipe, prompt="a sks shape", n=2, steps=2) -> np.ndarray:
    """The images validation_grid makes (seeds 0..n-1), side by side."""
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(s) for s in range(n)]
    images = pipe([prompt] * n, num_inference_steps=steps, generator=generators).images
    return np.concatenate([np.asarray(image) for image in images], axis=1).astype(int)


# --------------------------------------------------------------------------- config


def test_config_round_trips_through_yaml_and_json(tmp_path):
    config = DreamBoothConfig(instance_data_dir="star", use_lora=True, rank=8, validation_prompt=["a sks shape"])
    for suffix in (".yaml", ".json"):
        assert DreamBoothConfig.from_file(config.save(tmp_path / f"c{suffix}")) == config


def test_yaml_numbers_written_as_5e_6_are_read_as_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 5e-6\nmax_train_steps: '10'\n")
    config = DreamBoothConfig.from_file(path)
    assert config.learning_rate == 5e-6 and config.max_train_steps == 10


def test_unknown_field_is_an_error_that_suggests_the_right_name():
    with pytest.raises(ValueError, match="'leraning_rate' \\(did you mean 'learning_rate'\\?\\)"):
        DreamBoothConfig.from_dict({"leraning_rate": 1e-4})


def test_presets_set_the_hardware_and_keep_changes():
    t4 = DreamBoothConfig.from_preset("colab-t4", instance_data_dir="dog", use_lora=True)
    assert (t4.mixed_precision, t4.use_8bit_adam, t4.gradient_checkpointing, t4.resolution) == ("fp16", True, True, 512)
    assert t4.use_lora and t4.instance_data_dir == "dog"
    assert DreamBoothConfig.from_preset("24gb").train_text_encoder
    cpu = DreamBoothConfig.from_preset("cpu-mini")
    assert cpu.model == "mini" and cpu.mixed_precision == "no" and not cpu.use_8bit_adam
    assert cpu.train_identifier_embedding and not cpu.train_text_encoder  # pivotal tuning on mini-SD
    with pytest.raises(ValueError, match="preset='t4' is not one of cpu-mini, colab-t4, 24gb"):
        DreamBoothConfig.from_preset("t4")


def test_default_learning_rate_depends_on_method_and_model():
    assert DreamBoothConfig(model="sd15").lr == 5e-6
    assert DreamBoothConfig(model="sd15", use_lora=True).lr == 1e-4
    assert DreamBoothConfig(model="mini", use_lora=True).lr > DreamBoothConfig(model="mini").lr
    assert DreamBoothConfig(model="sd15", learning_rate=3e-6).lr == 3e-6


def test_default_schedule_depends_on_method_and_model(data, tmp_path):
    """diffusers' constant rate on SD; on mini-SD a LoRA decays along a cosine (see DEFAULT_LR_SCHEDULERS)."""
    assert DreamBoothConfig(model="sd15", use_lora=True).schedule == "constant"
    assert DreamBoothConfig(model="mini").schedule == "constant"
    assert DreamBoothConfig(model="mini", use_lora=True).schedule == "cosine"
    assert DreamBoothConfig(model="mini", use_lora=True, lr_scheduler="linear").schedule == "linear"
    config = make_config(data, tmp_path, use_lora=True, resolution=64, lr_warmup_steps=2)  # 64 px: mini's defaults
    out = train_dreambooth(config, progress=False).output_dir
    assert "| learning rate | 0.001 (cosine, warm-up 2) |" in (out / "README.md").read_text()


def test_a_pipeline_object_cannot_be_written_to_a_file(tmp_path):
    with pytest.raises(ValueError, match="save_pretrained"):
        DreamBoothConfig(model=tiny_pipeline()).save(tmp_path / "c.yaml")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(instance_data_dir=None), "instance_data_dir is not set"),
        (dict(instance_data_dir="/nonexistent/folder"), "is not a folder"),
        (dict(class_prompt="a sks shape"), "equals instance_prompt"),
        (dict(class_prompt="a sks shape and more", instance_prompt="a sks shape"), "has no word that class_prompt"),
        (dict(with_prior_preservation=True, class_prompt=None), "needs a class_prompt"),
        (dict(max_train_steps=0), "max_train_steps=0 must be a whole number"),
        (dict(offset_noise=-0.1), "offset_noise=-0.1 must be zero or positive"),
        (dict(snr_gamma=0.0), "snr_gamma=0.0 must be positive"),
        (dict(snr_floor=0.2), "snr_floor=0.2 needs snr_gamma set"),
        (dict(snr_gamma=5.0, snr_floor=6.0), "snr_floor=6.0 needs snr_gamma set and 0 <= snr_floor <= snr_gamma"),
        (dict(lr_scheduler="exponential"), "lr_scheduler='exponential' is not one of"),
        (dict(resolution=60), "resolution=60 must be divisible by 8"),
        (dict(use_8bit_adam=True), "use_8bit_adam=True needs a CUDA GPU"),
        (dict(mixed_precision="fp16"), "mixed_precision='fp16' needs a GPU"),
        (dict(resolution=128), "smaller than resolution=128: instance_00.png \\(64×64\\)"),
        (dict(train_identifier_embedding=True, identifier_learning_rate=0.0), "identifier_learning_rate=0.0 must be"),
        (dict(train_identifier_embedding=True, with_prior_preservation=False, class_prompt=None),
         "train_identifier_embedding=True needs identifier words"),
    ],
)
def test_bad_settings_are_clear_errors_that_write_nothing(data, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        train_dreambooth(make_config(data, tmp_path, **changes), progress=False)
    assert written(tmp_path) == []


def test_empty_instance_folder(data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        train_dreambooth(make_config(data, tmp_path, instance_data_dir=str(tmp_path / "empty")), progress=False)
    assert written(tmp_path) == []


def test_unreadable_files_are_skipped_with_a_warning_that_lists_them(data, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    world.render_pil(dreambooth_eval.subject_scenes(1)[0]).save(folder / "good.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.warns(DreamBoothWarning, match="skipped 2 file\\(s\\).*broken.png, notes.txt"):
        images = dreambooth.load_images(folder, resolution=64)
    assert len(images) == 1

    (folder / "good.png").unlink()
    with pytest.warns(DreamBoothWarning), pytest.raises(ValueError, match="holds no readable image"):
        train_dreambooth(make_config(data, tmp_path, instance_data_dir=str(folder)), progress=False)
    assert written(tmp_path) == []


def test_identifier_split_into_pieces_gets_a_warning_suggesting_sks(data):
    tokenizer = tiny_pipeline().tokenizer
    config = DreamBoothConfig(instance_prompt="a qxzv shape", class_prompt="a shape")
    with pytest.warns(DreamBoothWarning, match="'qxzv' is split .* such as 'sks'"):
        assert len(dreambooth.check_identifier(tokenizer, config)) == 1
    assert dreambooth.check_identifier(tokenizer, DreamBoothConfig()) == []  # "sks" is one token


def test_8bit_adam_without_bitsandbytes_a_lora_falls_back_to_adamw_with_a_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    params = [torch.nn.Parameter(torch.zeros(2))]
    config = DreamBoothConfig(use_8bit_adam=True, use_lora=True, learning_rate=1e-4)
    with pytest.warns(DreamBoothWarning, match="LoRA falls back to torch.optim.AdamW.*pip install bitsandbytes"):
        optimizer = dreambooth.make_optimizer(params, config)
    assert type(optimizer) is torch.optim.AdamW


def test_8bit_adam_without_bitsandbytes_full_fine_tuning_is_refused_before_anything_is_loaded(data, tmp_path, monkeypatch):
    """Plain AdamW needed 16.6 GiB for SD 1.5 (benchmarks/results/dreambooth.json): more than a T4 has."""
    measured = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "dreambooth.json").read_text())["gpu"]["runs"]
    plain = next(run for run in measured if run["name"] == "full-adamw-no-checkpointing")
    assert plain["train_loop_peak_allocated_gib"] > 15  # the reason for refusing on a 16 GB card
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setattr(dreambooth.loop, "expected_device", lambda: torch.device("cuda"))  # as on a T4
    monkeypatch.setattr(dreambooth.loop, "load_base_pipeline", lambda model: pytest.fail("loaded the model first"))
    config = make_config(data, tmp_path, use_8bit_adam=True, use_lora=False, mixed_precision="no")
    with pytest.raises(ValueError, match=r"bitsandbytes cannot be used.*pip install bitsandbytes.*use_lora=True"):
        train_dreambooth(config, progress=False)
    with pytest.raises(ValueError, match="pip install bitsandbytes"):
        dreambooth.make_optimizer([torch.nn.Parameter(torch.zeros(2))], config)
    assert not (tmp_path / "out").exists()


def test_push_to_hub_offline_fails_before_training(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="push_to_hub=True but the Hugging Face Hub is switched off"):
        train_dreambooth(make_config(data, tmp_path, push_to_hub=True), progress=False)
    assert written(tmp_path) == []


def test_an_output_dir_that_is_not_ours_is_never_replaced(data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="is not an earlier DreamBooth output"):
        train_dreambooth(make_config(data, tmp_path), progress=False)
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


# --------------------------------------------------------------------------- training and export


@pytest.mark.parametrize(
    "use_lora, train_text_encoder, identifier",
    [(False, False, False), (True, False, False), (True, True, False), (False, False, True), (True, False, True)],
    ids=["full", "lora", "lora-with-text-encoder", "full-pivotal", "lora-pivotal-all-layers"],
)
def test_output_loads_with_plain_diffusers_and_reproduces_validation(data, tmp_path, use_lora, train_text_encoder,
                                                                     identifier):
    targets = dreambooth.LORA_UNET_ALL_TARGETS if identifier else dreambooth.LORA_UNET_TARGETS  # as cpu-mini
    config = make_config(data, tmp_path, use_lora=use_lora, train_text_encoder=train_text_encoder,
                         train_identifier_embedding=identifier, lora_target_modules=targets,
                         validation_prompt="a sks shape", num_validation_images=2, validation_steps=3)
    result = train_dreambooth(config, progress=False)
    assert result.finished and result.global_step == 6 and len(result.losses) == 6
    assert written(tmp_path) == ["out", "out-run"]  # no temporary folder left behind
    assert [p.name for p in result.validation_grids] == ["step-000003.png", "step-000006.png"]

    out = result.output_dir
    if use_lora:
        extra = [dreambooth.IDENTIFIER_EMBEDDINGS] if identifier else []
        assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", LORA_FILE, "validation.png"] + extra)
        prefixes = {key.split(".")[0] for key in load_file(str(out / LORA_FILE))}
        assert prefixes == ({"unet", "text_encoder"} if train_text_encoder else {"unet"})
        pipe = StableDiffusionPipeline.from_pretrained(data / "tiny")
        dreambooth.load_lora_output(pipe, out)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(out)
    grid = np.asarray(Image.open(out / "validation.png")).astype(int)
    assert np.array_equal(sample(pipe), grid)
    base = StableDiffusionPipeline.from_pretrained(data / "tiny")
    assert not np.array_equal(sample(base), grid)  # training changed the model

    card = (out / "README.md").read_text()
    assert "sdcourse-dreambooth" in card and "a sks shape" in card
    assert ("load_lora_weights" in card) == use_lora


def test_pivotal_tuning_changes_only_the_identifier_embedding(data, tmp_path):
    """Full UNet fine-tuning plus the identifier's embedding; the rest of the text encoder is
    bit-identical, so class prompts are encoded exactly as before."""
    config = make_config(data, tmp_path, train_identifier_embedding=True, identifier_learning_rate=1e-2)
    out = train_dreambooth(config, progress=False).output_dir
    base, after = StableDiffusionPipeline.from_pretrained(data / "tiny"), StableDiffusionPipeline.from_pretrained(out)
    ids = dreambooth.identifier_token_ids(base.tokenizer, config)
    assert ids == base.tokenizer("sks", add_special_tokens=False).input_ids
    before_state, after_state = base.text_encoder.state_dict(), after.text_encoder.state_dict()
    table = next(k for k in before_state if k.endswith("token_embedding.weight"))
    changed = (before_state[table] != after_state[table]).any(dim=1).nonzero().flatten().tolist()
    assert changed == ids
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state if k != table)
    assert "identifier embedding learned | yes, sks at learning rate 0.01" in (out / "README.md").read_text()


def test_lora_card_shows_how_to_load_the_identifier_embeddings(data, tmp_path):
    """The card's plain loading code, run as written, gives the same pipeline as load_lora_output."""
    config = make_config(data, tmp_path, use_lora=True, train_identifier_embedding=True, model=str(data / "tiny"))
    out = train_dreambooth(config, progress=False).output_dir
    code = dreambooth.usage_code(config).replace("<this folder or repo>", str(out)).replace("<this folder>", str(out))
    namespace = {}
    exec(code, namespace)
    expected = StableDiffusionPipeline.from_pretrained(data / "tiny")
    dreambooth.load_lora_output(expected, out)
    assert np.array_equal(sample(namespace["pipe"]), sample(expected))


def test_class_images_are_generated_once_and_reused(data, tmp_path):
    folder = tmp_path / "class"
    config = make_config(data, tmp_path, class_data_dir=str(folder), max_train_steps=1)
    train_dreambooth(config, progress=False)
    made = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    assert sorted(made) == ["class_00000.png", "class_00001.png", "class_00002.png"]

    again = make_config(data, tmp_path, "second", class_data_dir=str(folder), max_train_steps=1, num_class_images=4)
    train_dreambooth(again, progress=False)
    now = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    assert len(now) == 4 and all(now[name] == made[name] for name in made)  # the three are reused

    other = make_config(data, tmp_path, "third", class_data_dir=str(folder), class_prompt="a circle")
    with pytest.raises(ValueError, match="made for class_prompt='a shape'"):
        train_dreambooth(other, progress=False)


def test_several_class_prompts_take_turns_in_images_and_training(data, tmp_path):
    """Class image i is made from class prompt i % n with seed i, and trained with that prompt."""
    prompts = ["a red shape", "a blue shape on a green background"]
    folder = tmp_path / "class"
    config = make_config(data, tmp_path, class_data_dir=str(folder), class_prompt=prompts, num_class_images=3,
                         max_train_steps=1)
    train_dreambooth(config, progress=False)
    assert json.loads((folder / "class_images.json").read_text())["class_prompt"] == prompts
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe([prompts[0], prompts[1], prompts[0]], num_inference_steps=2,  # one batch, as the trainer
                    generator=[torch.Generator("cpu").manual_seed(i) for i in range(3)]).images
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(folder / f"class_{i:05d}.png")), np.asarray(expected[i]))

    dataset = dreambooth.DreamBoothDataset(torch.zeros(2, 1), torch.zeros(3, 1), n_class_prompts=2)
    assert [dataset[i]["prior_prompt"] for i in range(len(dataset))] == [0, 1, 0]
    ids = torch.cat([dreambooth.encode_prompt_ids(pipe.tokenizer, p) for p in ["a sks shape"] + prompts])
    with torch.no_grad():
        table = pipe.text_encoder(ids)[0]
    parts = {"instance_embeddings": table[:1], "prior_embeddings": table[1:]}
    states = dreambooth.batch_encoder_hidden_states(parts, torch.tensor([0, 0]), torch.tensor([1, 0, 1]))
    assert [next(k for k in range(3) if torch.equal(state, table[k])) for state in states] == [0, 0, 2, 1, 2]


def test_caption_files_give_each_instance_image_its_prompt(tmp_path):
    """With caption_extension each image trains with its own caption: the dataset pairs example i
    with prompt i, and prepare_data encodes the captions in the images' order."""
    folder = dreambooth_eval.write_concept_images(tmp_path / "instance", n=3, caption_extension=".txt")
    config = DreamBoothConfig(instance_data_dir=str(folder), caption_extension=".txt", with_prior_preservation=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DreamBoothWarning)  # the caption files are not "unreadable images"
        images, prompts = dreambooth.load_instance_data(config, 64)
    scenes = dreambooth_eval.subject_scenes(3)
    assert prompts == [f"a sks shape on {'an' if s.background[0] in 'aeiou' else 'a'} {s.background} background"
                       for s in scenes]
    assert [np.asarray(image).tolist() for image in images] == [np.asarray(world.render_pil(s)).tolist() for s in scenes]

    pipe = tiny()
    dataloader, parts = dreambooth.prepare_data(pipe, config, images, prompts, None, 64, torch.device("cpu"))
    dataset = dataloader.dataset
    assert [dataset[i]["instance_prompt"] for i in range(3)] == [0, 1, 2]
    with torch.no_grad():
        expected = pipe.text_encoder(torch.cat([dreambooth.encode_prompt_ids(pipe.tokenizer, p) for p in prompts]))[0]
    assert torch.equal(parts["instance_embeddings"], expected)
    states = dreambooth.batch_encoder_hidden_states(parts, torch.tensor([2, 0]))
    assert torch.equal(states[0], expected[2]) and torch.equal(states[1], expected[0])

    plain = DreamBoothConfig(instance_data_dir=str(folder), with_prior_preservation=False)
    with pytest.warns(DreamBoothWarning, match="instance_00.txt"):  # without captions, text files are odd files
        assert dreambooth.load_instance_data(plain, 64)[1] == ["a sks shape"]


def test_concept_class_prompts_name_a_colour_and_another_background():
    prompts = dreambooth_eval.concept_class_prompts()
    assert len(set(prompts)) == 64
    scenes = [world.parse_caption(prompt) for prompt in prompts]
    assert all(len(s.objects) == 1 and s.objects[0].shape == world.CLASS_NOUN for s in scenes)
    assert all(s.objects[0].colour in world.COLOURS and s.background not in (None, s.objects[0].colour) for s in scenes)
    assert {s.objects[0].colour for s in scenes} == set(world.COLOURS)
    assert dreambooth_eval.concept_class_prompts(5) == prompts[:5]
    with pytest.raises(ValueError, match="n=73 must be between 1 and 72"):
        dreambooth_eval.concept_class_prompts(73)


@pytest.mark.parametrize("problem, message", [
    ("missing", "no caption file for instance_01.png"),
    ("no identifier", "instance_01.txt must name the subject with its identifier 'sks'"),
    ("suffix", "must be a file suffix such as '.txt'"),
])
def test_bad_captions_are_clear_errors(data, tmp_path, problem, message):
    folder = dreambooth_eval.write_concept_images(tmp_path / "instance", n=2, caption_extension=".txt")
    extension = ".txt"
    if problem == "missing":
        (folder / "instance_01.txt").unlink()
    elif problem == "no identifier":
        (folder / "instance_01.txt").write_text("a shape on a red background")
    else:
        extension = "txt"
    config = make_config(data, tmp_path, instance_data_dir=str(folder), caption_extension=extension)
    with pytest.raises(ValueError, match=message):
        train_dreambooth(config, progress=False)
    assert written(tmp_path) == []


def test_training_with_captions_says_so_in_the_model_card(data, tmp_path):
    folder = dreambooth_eval.write_concept_images(tmp_path / "instance", n=2, caption_extension=".txt")
    result = train_dreambooth(make_config(data, tmp_path, instance_data_dir=str(folder), caption_extension=".txt",
                                          use_lora=True, max_train_steps=2), progress=False)
    assert result.finished and (Path(result.output_dir) / LORA_FILE).is_file()
    assert "| instance prompts | one caption per image (*.txt) |" in (Path(result.output_dir) / "README.md").read_text()


@pytest.mark.parametrize("prompt", [["a shape", ""], 3])
def test_bad_class_prompt_lists_are_clear_errors(data, tmp_path, prompt):
    with pytest.raises(ValueError, match="must be a prompt or a list of prompts"):
        train_dreambooth(make_config(data, tmp_path, class_prompt=prompt), progress=False)
    assert written(tmp_path) == []


def test_the_model_learns_the_instance_images(data, tmp_path):
    """The denoising loss on the instance latents (fixed noise and timesteps) goes down."""
    config = make_config(data, tmp_path, max_train_steps=15, with_prior_preservation=False)
    result = train_dreambooth(config, progress=False)

    def instance_loss(unet, pipe):
        images = dreambooth.load_images(config.instance_data_dir, 64)
        latents = dreambooth.encode_images(pipe.vae, dreambooth.preprocess_images(pipe.image_processor, images, 64))
        generator = torch.Generator("cpu").manual_seed(123)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (len(latents),), generator=generator)
        noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
        states = pipe.text_encoder(dreambooth.encode_prompt_ids(pipe.tokenizer, config.instance_prompt))[0]
        with torch.no_grad():
            pred = unet(noisy, timesteps, states.expand(len(latents), -1, -1)).sample
        return torch.nn.functional.mse_loss(pred, noise).item()

    base = StableDiffusionPipeline.from_pretrained(data / "tiny")
    trained = StableDiffusionPipeline.from_pretrained(result.output_dir)
    assert instance_loss(trained.unet, base) < 0.9 * instance_loss(base.unet, base)


def test_the_progress_bar_redraws_on_its_timer_not_every_step(data, tmp_path, monkeypatch):
    """A redraw per step floods a notebook with output messages (nbval then loses the cell's last
    one); the loss and learning rate wait for tqdm's next timed redraw."""
    from tqdm.std import tqdm

    redraws = []

    class SlowBar(tqdm):  # a timer that never fires: only forced redraws are counted
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "mininterval": 1e9, "file": io.StringIO()})

        def refresh(self, *args, **kwargs):
            redraws.append(self.n)
            return super().refresh(*args, **kwargs)

    monkeypatch.setattr(dreambooth.loop, "tqdm", SlowBar)
    train_dreambooth(make_config(data, tmp_path, max_train_steps=6, with_prior_preservation=False), progress=True)
    assert len(redraws) <= 2  # opening and closing the bar, not one per step


def test_prior_loss_is_added_with_its_weight(data):
    """loss = instance MSE + prior_loss_weight × prior MSE: linear in the weight, with a positive slope."""
    pipe = tiny_pipeline()
    batch = {"instance": torch.randn(2, 4, 16, 16), "prior": torch.randn(2, 4, 16, 16),
             "instance_prompt": torch.tensor([0, 0]), "prior_prompt": torch.tensor([0, 0])}
    ids = dreambooth.encode_prompt_ids(pipe.tokenizer, "a sks shape")
    parts = {"unet": pipe.unet, "vae": pipe.vae, "noise_scheduler": pipe.scheduler,
             "instance_embeddings": pipe.text_encoder(ids)[0], "prior_embeddings": pipe.text_encoder(ids)[0]}
    losses = []
    for weight in (0.0, 1.0, 2.0):
        config = DreamBoothConfig(prior_loss_weight=weight)
        with torch.no_grad():
            losses.append(dreambooth.training_loss(batch, parts, config, torch.Generator().manual_seed(0)).item())
    assert losses[1] - losses[0] > 0
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4)


def test_offset_noise_adds_one_constant_per_image_and_channel():
    """With offset_noise the UNet's noisy input differs from the plain one by a spatially constant
    amount per (image, channel): what the base model saw in training, if it was trained so."""
    pipe = tiny_pipeline()
    batch = {"instance": torch.randn(2, 4, 16, 16), "instance_prompt": torch.tensor([0, 0])}
    ids = dreambooth.encode_prompt_ids(pipe.tokenizer, "a sks shape")
    parts = {"unet": pipe.unet, "vae": pipe.vae, "noise_scheduler": pipe.scheduler,
             "instance_embeddings": pipe.text_encoder(ids)[0]}
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        for offset in (0.0, 0.5):
            config = DreamBoothConfig(offset_noise=offset, with_prior_preservation=False)
            with torch.no_grad():
                dreambooth.training_loss(batch, parts, config, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    difference = seen[1] - seen[0]
    centred = difference - difference.mean(dim=(2, 3), keepdim=True)
    assert difference.abs().amin() > 1e-3
    assert centred.abs().amax() < 1e-5


def test_snr_weighting_reweighs_examples_by_timestep():
    """snr_gamma very large weighs every example 1 (plain MSE); gamma 5 with a floor changes the loss
    by exactly the per-example weights of sdcourse.training.snr_weights."""
    pipe = tiny_pipeline()
    batch = {"instance": torch.randn(4, 4, 16, 16), "prior": torch.randn(4, 4, 16, 16),
             "instance_prompt": torch.zeros(4, dtype=torch.long), "prior_prompt": torch.zeros(4, dtype=torch.long)}
    ids = dreambooth.encode_prompt_ids(pipe.tokenizer, "a sks shape")
    embeddings = pipe.text_encoder(ids)[0]
    parts = {"unet": pipe.unet, "vae": pipe.vae, "noise_scheduler": pipe.scheduler,
             "instance_embeddings": embeddings, "prior_embeddings": embeddings}
    losses = {}
    for name, settings in {"plain": {}, "huge": dict(snr_gamma=1e12), "min_snr": dict(snr_gamma=5.0, snr_floor=0.2)}.items():
        config = DreamBoothConfig(**settings)
        with torch.no_grad():
            losses[name] = dreambooth.training_loss(batch, parts, config, torch.Generator().manual_seed(0)).item()
    assert losses["huge"] == pytest.approx(losses["plain"], rel=1e-5)
    assert abs(losses["min_snr"] - losses["plain"]) > 1e-3 * losses["plain"]


def test_same_seed_same_model_other_seed_other_model(data, tmp_path):
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = make_config(data, tmp_path, name, seed=seed, max_train_steps=2, use_lora=True)
        weights.append(model_weights(train_dreambooth(config, progress=False).output_dir, lora=True))
    a, b, c = weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --------------------------------------------------------------------------- checkpoints and resume


@pytest.mark.parametrize("use_lora, identifier", [(False, False), (True, False), (True, True)],
                         ids=["full", "lora", "lora-pivotal"])
def test_stop_and_resume_gives_the_same_weights_as_one_run(data, tmp_path, use_lora, identifier):
    # 4 instance images, batch 3, accumulation 2: epochs of 2 batches end mid-accumulation,
    # and the resume at step 3 starts in the middle of an epoch.
    settings = dict(use_lora=use_lora, max_train_steps=6, train_batch_size=3, gradient_accumulation_steps=2,
                    lr_scheduler="cosine", lr_warmup_steps=2, num_class_images=5, train_identifier_embedding=identifier)
    straight = train_dreambooth(make_config(data, tmp_path, "straight", **settings), progress=False)

    first = train_dreambooth(make_config(data, tmp_path, "resumed", **settings), progress=False, stop_at_step=3)
    assert not first.finished and first.output_dir is None and not (tmp_path / "resumed").exists()
    assert [step for step, _ in dreambooth.checkpoint_folders(first.run_dir)] == [3]
    second = train_dreambooth(
        make_config(data, tmp_path, "resumed", resume_from_checkpoint="latest", **settings), progress=False
    )
    assert second.resumed_from_step == 3 and second.global_step == 6
    assert second.losses == straight.losses[3:]
    a, b = model_weights(straight.output_dir, use_lora), model_weights(second.output_dir, use_lora)
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact, not within a tolerance
    if identifier:
        a, b = (load_file(str(run.output_dir / dreambooth.IDENTIFIER_EMBEDDINGS)) for run in (straight, second))
        assert list(a) == ["sks</w>"] and torch.equal(a["sks</w>"], b["sks</w>"])


def test_lora_checkpoints_hold_only_the_lora_weights(data, tmp_path):
    full = train_dreambooth(make_config(data, tmp_path, "f", max_train_steps=2, checkpointing_steps=2), progress=False)
    lora = train_dreambooth(make_config(data, tmp_path, "l", max_train_steps=2, checkpointing_steps=2, use_lora=True),
                            progress=False)
    size = lambda run: sum(p.stat().st_size for p in (run / "checkpoint-2").glob("*.safetensors"))  # noqa: E731
    assert sorted(p.name for p in (lora.run_dir / "checkpoint-2").glob("*.safetensors")) == ["unet_lora.safetensors"]
    assert size(lora.run_dir) < size(full.run_dir) / 20


def test_old_checkpoints_are_pruned(data, tmp_path):
    config = make_config(data, tmp_path, max_train_steps=6, checkpointing_steps=1, checkpoints_total_limit=2)
    result = train_dreambooth(config, progress=False)
    assert [step for step, _ in dreambooth.checkpoint_folders(result.run_dir)] == [5, 6]


def test_starting_over_on_old_checkpoints_or_resuming_other_settings_is_refused(data, tmp_path):
    train_dreambooth(make_config(data, tmp_path, max_train_steps=2, checkpointing_steps=1), progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints .* resume_from_checkpoint='latest'"):
        train_dreambooth(make_config(data, tmp_path, max_train_steps=4), progress=False)
    with pytest.raises(ValueError, match="trained with other settings \\(use_lora: False → True"):
        train_dreambooth(make_config(data, tmp_path, max_train_steps=4, use_lora=True, resume_from_checkpoint="latest"),
                         progress=False)


@pytest.mark.slow  # a subprocess pays the imports again (~10 s)
def test_sigkill_during_training_then_resume_finishes_with_intact_checkpoints(data, tmp_path):
    config = make_config(data, tmp_path, model=str(data / "tiny"), max_train_steps=30, train_batch_size=1,
                         checkpointing_steps=3, checkpoints_total_limit=3)
    path = config.save(tmp_path / "config.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sdcourse.cli", "dreambooth", "--config", str(path), "-q"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(step >= 6 for step, _ in dreambooth.checkpoint_folders(config.run_path)):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not Path(config.output_dir).exists()  # nothing half-written

    checkpoints = dreambooth.checkpoint_folders(config.run_path)
    for step, folder in checkpoints:  # every complete checkpoint is intact
        assert dreambooth.checkpoint_step(folder) == step
        assert set(load_file(str(folder / "model.safetensors"))) == set(tiny_pipeline().unet.state_dict())
    last = checkpoints[-1][0]
    assert last < 30

    config.resume_from_checkpoint = "latest"
    result = train_dreambooth(config, progress=False)
    assert result.resumed_from_step == last and result.global_step == 30 and result.finished
    assert len(result.losses) == 30 - last
    assert not list(config.run_path.glob("tmp-checkpoint-*"))
    StableDiffusionPipeline.from_pretrained(result.output_dir)


@pytest.mark.slow  # two processes pay the imports (~10 s)
def test_two_processes_under_torchrun_share_one_run(data, tmp_path):
    """What `accelerate launch` does on several GPUs, here on two CPU processes (gloo)."""
    config = make_config(data, tmp_path, model=str(data / "tiny"), use_lora=True, train_batch_size=1,
                         max_train_steps=4, checkpointing_steps=4)
    path = config.save(tmp_path / "config.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sdcourse.cli", "dreambooth", "--config", str(path), "-q"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as launcher:
        try:
            stdout, stderr = launcher.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both workers: none left behind
            stdout, stderr = launcher.communicate()
            pytest.fail(f"two processes did not finish in 240 s; stdout: {stdout[-1500:]}\nstderr: {stderr[-3000:]}")
    done = subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # the main process reports
    assert summaries[0]["global_step"] == 4 and summaries[0]["output_dir"] == config.output_dir
    checkpoint = config.run_path / "checkpoint-4"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    StableDiffusionPipeline.from_pretrained(data / "tiny").load_lora_weights(config.output_dir)


# --------------------------------------------------------------------------- command line


def test_cli_merges_config_file_preset_options_and_set(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("instance_data_dir: from-file\nrank: 32\n")
    code = cli.main(["dreambooth", "--config", str(path), "--preset", "cpu-mini", "--max_train_steps", "7",
                     "--use-lora", "--set", "learning_rate=2e-4", "--set", "validation_prompt=[a, b]",
                     "--print-config"])
    assert code == 0
    printed = DreamBoothConfig.from_dict(__import__("yaml").safe_load(capsys.readouterr().out))
    assert printed.instance_data_dir == "from-file" and printed.rank == 32  # the file beats the preset (16)
    assert printed.resolution == 64 and printed.max_train_steps == 7 and printed.use_lora
    assert printed.learning_rate == 2e-4 and printed.validation_prompt == ["a", "b"]


def test_cli_bad_config_is_a_short_error(tmp_path, capsys):
    assert cli.main(["dreambooth", "--set", "rnak=4"]) == 2
    assert "did you mean 'rank'?" in capsys.readouterr().err
    assert cli.main(["dreambooth", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err


# --------------------------------------------------------------------------- the concept and its report


def test_concept_is_one_star_in_one_colour_in_varied_scenes():
    scenes = dreambooth_eval.subject_scenes(8, seed=0, colour="yellow")
    objects = [scene.objects[0] for scene in scenes]
    assert all(len(s.objects) == 1 and s.background != "yellow" for s in scenes)
    assert {o.shape for o in objects} == {world.HELDOUT_SHAPE} and {o.colour for o in objects} == {"yellow"}
    assert len({s.background for s in scenes}) >= 4 and len({o.position for o in objects}) >= 3
    prompts = dreambooth_eval.concept_prompts("sks", "yellow")
    assert prompts["concept"] == ["a sks shape"] and len(prompts["composition"]) == len(world.COLOURS) - 1
    assert "a sks shape on a green background" in prompts["composition"]
    assert not any("yellow background" in p for p in prompts["composition"])


def test_concept_report_compares_before_and_after():
    pipe = tiny_pipeline()
    report = dreambooth_eval.concept_report(pipe, pipe, seeds=range(2), composition_seeds=range(1), class_seeds=range(1),
                                       num_inference_steps=2)
    assert report["before"] == report["after"] and report["class_drop"] == 0
    assert set(report["before"]) == {"concept", "composition", "class", "concept_colour"}
    assert all(0 <= v <= 1 for v in report["before"].values())


# --------------------------------------------------------------------------- quality on mini-SD

needs_mini = pytest.mark.skipif(not mini_available(), reason="mini-SD not trained yet")


@pytest.fixture(scope="module")
def mini_runs(tmp_path_factory):
    """Train on mini-SD at most once per setting; score the base model once."""
    from sdcourse import load_pipeline

    root = tmp_path_factory.mktemp("mini-dreambooth")
    dreambooth_eval.write_concept_images(root / "instance", n=8, caption_extension=".txt")
    before = dreambooth_eval.concept_scores(load_pipeline("mini", device="cpu"))
    cache = {}

    def scores_after(use_lora: bool, with_prior_preservation: bool = True, max_train_steps: int | None = None) -> dict:
        key = (use_lora, with_prior_preservation, max_train_steps)
        if key not in cache:
            changes = dict(max_train_steps=max_train_steps) if max_train_steps else {}
            config = DreamBoothConfig.from_preset(
                "cpu-mini", instance_data_dir=str(root / "instance"), class_data_dir=str(root / "class"),
                output_dir=str(root / f"out-{use_lora}-{with_prior_preservation}-{max_train_steps}"), use_lora=use_lora,
                with_prior_preservation=with_prior_preservation, **dreambooth_eval.concept_settings(), **changes,
            )
            result = train_dreambooth(config, progress=False)
            if use_lora:
                after = load_pipeline("mini", device="cpu")
                dreambooth.load_lora_output(after, result.output_dir)
            else:
                after = StableDiffusionPipeline.from_pretrained(result.output_dir)
            cache[key] = dreambooth_eval.concept_scores(after)
            print(f"\nuse_lora={use_lora} prior={with_prior_preservation}: {json.dumps(cache[key])}; "
                  f"{result.train_seconds:.0f} s of training")
        return cache[key]

    return before, scores_after


# Full fine-tuning meets the bars at some training seeds and not others (CHANGELOG.md, "DreamBooth on mini-SD").
FULL_SEED_DEPENDENT = pytest.mark.xfail(reason="full fine-tuning at seed 0: concept 0.43, bar 0.70")
# Full fine-tuning's run (3 more minutes) is left out of the default run: `-m long` runs it.
CONCEPT_CASES = [pytest.param(True, id="lora"),
                 pytest.param(False, id="full", marks=[FULL_SEED_DEPENDENT, pytest.mark.long])]
METHODS = [pytest.param(True, id="lora"), pytest.param(False, id="full", marks=pytest.mark.long)]


@pytest.mark.quality
@needs_mini
@pytest.mark.slow
@pytest.mark.parametrize("use_lora", CONCEPT_CASES)
def test_mini_learns_the_concept_with_prior_preservation(mini_runs, use_lora):
    before, scores_after = mini_runs
    after = scores_after(use_lora)
    assert before["concept"] <= 0.2  # mini-SD never saw a star
    assert after["concept"] >= 0.7
    assert after["composition"] >= 0.5


@pytest.mark.quality
@needs_mini
@pytest.mark.slow
@pytest.mark.parametrize("use_lora", METHODS)
def test_mini_prior_preservation_keeps_the_class(mini_runs, use_lora):
    """At most 10 points of class accuracy lost (measured: 0.88 -> 0.88 LoRA, 0.84 full)."""
    before, scores_after = mini_runs
    drop = before["class"] - scores_after(use_lora)["class"]
    assert round(drop, 6) <= 0.10  # 9 images in 90 are exactly 10 points


@pytest.mark.quality
@needs_mini
@pytest.mark.slow
def test_mini_without_prior_preservation_drifts_more(mini_runs):
    """Without prior preservation the class drifts within half the preset's steps (measured on the
    current mini-SD at 300 steps: class drop 0.21, concept already 0.70; with it, at 600 steps: 0.00)."""
    before, scores_after = mini_runs
    drop_with = before["class"] - scores_after(True)["class"]
    drop_without = before["class"] - scores_after(True, with_prior_preservation=False, max_train_steps=300)["class"]
    print(f"\nclass accuracy drop: {drop_with:.2f} with prior preservation (600 steps), {drop_without:.2f} without (300)")
    assert drop_without >= drop_with + 0.10  # measured: 0.21 vs 0.00
