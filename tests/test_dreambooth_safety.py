"""DreamBooth never loses or changes a learner's data, and refuses numbers that cannot be right up front.

Folders that overlap the instance images, a finished model in output_dir, folders that cannot be
written, a half-written export left by a kill, a damaged newest checkpoint, NaN/inf/strings/zeros
where numbers belong, and a run that diverges. Runs on the tiny random pipeline (2-4 steps each).
"""

import dataclasses
import functools
import hashlib
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdcourse import cli, dreambooth, dreambooth_eval, load_pipeline
from sdcourse.dreambooth import DreamBoothConfig, DreamBoothWarning, train_dreambooth
from sdcourse.models import mini_available
from sdcourse.testing import tiny_pipeline

LORA_FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Instance images of the concept, a shared class-image cache, and the tiny model on disk."""
    root = tmp_path_factory.mktemp("dreambooth-safety")
    dreambooth_eval.write_concept_images(root / "instance", n=4)
    tiny_pipeline().save_pretrained(root / "tiny")
    return root


@functools.cache
def tiny():
    return tiny_pipeline()


def make_config(data, tmp_path, name="out", **changes) -> DreamBoothConfig:
    values = dict(
        model=tiny(), instance_data_dir=str(data / "instance"), class_data_dir=str(data / "class"),
        num_class_images=3, sample_batch_size=3, num_inference_steps=2, max_train_steps=2, train_batch_size=2,
        checkpointing_steps=100, learning_rate=1e-3, use_lora=True, output_dir=str(tmp_path / name),
    )
    values.update(changes)
    return DreamBoothConfig(**values)


def written(tmp_path, name="out") -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((name, f".{name}")))


def hashes(folder: Path) -> dict:
    """Every file under folder (relative path -> sha256): what the learner must find unchanged."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_instance(data, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for image in (data / "instance").iterdir():
        (folder / image.name).write_bytes(image.read_bytes())
    return folder


# --------------------------------------------------------------------------- the learner's images


@pytest.mark.parametrize("where", ["class is instance", "class is a link to instance", "class inside instance",
                                   "class contains instance", "run_dir inside instance", "output_dir contains instance"])
def test_folders_overlapping_the_instance_images_are_refused_before_anything_is_written(data, tmp_path, where):
    photos = copy_instance(data, tmp_path / "photos" / "dog")
    (tmp_path / "link").symlink_to(photos)
    before = hashes(tmp_path / "photos")
    changes = {
        "class is instance": dict(class_data_dir=str(photos) + "/"),
        "class is a link to instance": dict(class_data_dir=str(tmp_path / "link")),
        "class inside instance": dict(class_data_dir=str(photos / "class")),
        "class contains instance": dict(class_data_dir=str(tmp_path / "photos")),
        "run_dir inside instance": dict(run_dir=str(photos / "run")),
        "output_dir contains instance": dict(output_dir=str(tmp_path / "photos")),
    }[where]
    name = next(iter(changes))
    with pytest.raises(ValueError, match=f"{name}=.* instance_data_dir=.*folder of its own"):
        train_dreambooth(make_config(data, tmp_path, instance_data_dir=str(photos), **changes), progress=False)
    assert hashes(tmp_path / "photos") == before  # byte-identical, nothing added
    assert written(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "photos"]


@pytest.mark.parametrize("name, folder, relation", [("class_data_dir", "out/class", "is inside"),
                                                   ("run_dir", "out", "is"), ("run_dir", "out/run", "is inside")])
def test_folders_inside_output_dir_are_refused(data, tmp_path, name, folder, relation):
    """The finished model replaces output_dir: class images or checkpoints there would be deleted with it."""
    with pytest.raises(ValueError, match=f"{name}=.* {relation} output_dir=.*outside output_dir"):
        train_dreambooth(make_config(data, tmp_path, **{name: str(tmp_path / folder)}), progress=False)
    assert written(tmp_path) == []


# --------------------------------------------------------------------------- a finished model is kept


def test_a_finished_model_is_kept_unless_overwrite(data, tmp_path, capsys):
    first = train_dreambooth(make_config(data, tmp_path), progress=False)
    kept = hashes(first.output_dir)
    with pytest.raises(ValueError, match="already holds a finished DreamBooth model.*overwrite=True \\(CLI: --overwrite\\)"):
        train_dreambooth(make_config(data, tmp_path, max_train_steps=3, learning_rate=2e-3), progress=False)
    assert hashes(first.output_dir) == kept

    # the CLI refuses it too, before the model is loaded
    args = ["dreambooth", "--model", str(data / "tiny"), "--instance-data-dir", str(data / "instance"),
            "--class-data-dir", str(data / "class"), "--output-dir", str(first.output_dir), "--max-train-steps", "3"]
    assert cli.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert hashes(first.output_dir) == kept
    assert cli.main([*args, "--overwrite", "--print-config"]) == 0
    assert "overwrite: true" in capsys.readouterr().out

    second = train_dreambooth(make_config(data, tmp_path, max_train_steps=3, learning_rate=2e-3, overwrite=True),
                              progress=False)
    assert second.global_step == 3 and hashes(second.output_dir) != kept


def test_overwrite_never_replaces_a_folder_that_is_not_ours(data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="is not an earlier DreamBooth output of sdcourse"):
        train_dreambooth(make_config(data, tmp_path, overwrite=True), progress=False)
    assert hashes(tmp_path / "out") == {"thesis.tex": hashlib.sha256(b"precious").hexdigest()}


def test_a_model_left_in_name_old_by_an_interrupted_export_is_kept(data, tmp_path):
    first = train_dreambooth(make_config(data, tmp_path), progress=False)
    first.output_dir.rename(tmp_path / "out.old")  # killed between replace_folder's two renames
    with pytest.raises(ValueError, match="out.old', left there by an interrupted export.*overwrite=True"):
        train_dreambooth(make_config(data, tmp_path, run_dir=str(tmp_path / "other-run")), progress=False)
    assert (tmp_path / "out.old" / LORA_FILE).is_file()


def test_a_stopped_run_resumes_into_its_output_dir_but_a_finished_one_needs_overwrite_to_go_on(data, tmp_path):
    first = train_dreambooth(make_config(data, tmp_path, max_train_steps=3), progress=False, stop_at_step=1)
    assert not first.finished and not (tmp_path / "out").exists()
    resumed = train_dreambooth(make_config(data, tmp_path, max_train_steps=3, resume_from_checkpoint="latest"),
                               progress=False)
    assert resumed.finished and resumed.resumed_from_step == 1 and resumed.global_step == 3
    kept = hashes(resumed.output_dir)
    with pytest.raises(ValueError, match="to train it further from run_dir's checkpoints and replace it set overwrite"):
        train_dreambooth(make_config(data, tmp_path, max_train_steps=4, resume_from_checkpoint="latest"),
                         progress=False)
    assert hashes(resumed.output_dir) == kept


# --------------------------------------------------------------------------- folders that cannot be written


def test_an_output_dir_under_a_file_is_refused_before_training(data, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    config = make_config(data, tmp_path, output_dir=str(tmp_path / "notes.txt" / "out"), run_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="the folder of output_dir=.*notes.txt/out.* cannot be written"):
        train_dreambooth(config, progress=False)
    assert not dreambooth.checkpoint_folders(tmp_path / "run")
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"


@pytest.mark.parametrize("name", ["run_dir", "class_data_dir"])
def test_a_read_only_folder_is_refused_by_name_before_training(data, tmp_path, monkeypatch, name):
    """Read-only is simulated (root writes anywhere): the probe file in that folder is refused."""
    folder = tmp_path / "read-only"
    real = dreambooth.checks.tempfile.mkstemp

    def mkstemp(prefix, dir):
        if Path(dir) == folder:
            raise PermissionError(13, "Permission denied")
        return real(prefix=prefix, dir=dir)

    monkeypatch.setattr(dreambooth.checks.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(dreambooth.loop, "train_loop", lambda *args: pytest.fail("trained before the check"))
    config = make_config(data, tmp_path, **{name: str(folder)})
    with pytest.raises(ValueError, match=f"{name}=.*read-only.* cannot be written \\(PermissionError: Permission denied"):
        train_dreambooth(config, progress=False)
    assert not list(folder.iterdir())


def test_a_failed_export_keeps_the_trained_weights_in_the_run_dir(data, tmp_path, monkeypatch):
    straight = train_dreambooth(make_config(data, tmp_path, "straight", max_train_steps=3), progress=False)

    def fail(tmp, out):
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(dreambooth.export, "replace_folder", fail)
    with pytest.raises(OSError, match="could not be written .*PermissionError.*kept in .*out-run/checkpoint-3"
                                      ".*resume_from_checkpoint='latest'"):
        train_dreambooth(make_config(data, tmp_path, max_train_steps=3), progress=False)
    assert written(tmp_path) == ["out-run"]  # no output_dir, no hidden temporary folder
    monkeypatch.undo()

    again = train_dreambooth(make_config(data, tmp_path, max_train_steps=3, resume_from_checkpoint="latest"),
                             progress=False)
    assert again.finished and again.resumed_from_step == 3 and again.losses == []  # exported, not retrained
    a, b = load_file(str(again.output_dir / LORA_FILE)), load_file(str(straight.output_dir / LORA_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- a killed export


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


KILLED_EXPORT = """
import os, signal, sys
from sdcourse import dreambooth
def killed(tmp, out):  # the model is written in full; the process dies before the rename
    os.kill(os.getpid(), signal.SIGKILL)
dreambooth.export.replace_folder = killed
dreambooth.train_dreambooth(dreambooth.DreamBoothConfig.from_file(sys.argv[1]), progress=False)
"""


@pytest.mark.slow  # a subprocess pays the imports again (~10 s)
def test_an_export_killed_for_real_leaves_a_folder_that_the_next_run_removes(data, tmp_path):
    config = make_config(data, tmp_path, model=str(data / "tiny"), use_lora=False)
    path = config.save(tmp_path / "config.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(path)], env=env, capture_output=True, timeout=300)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(left) == 1 and (left[0] / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (tmp_path / "out").exists()

    with pytest.warns(DreamBoothWarning, match=f"removed '{left[0]}', a half-written export"):
        result = train_dreambooth(config, progress=False)
    assert result.finished and not left[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "out", "out-run"]


def test_a_half_written_export_is_removed_on_the_next_run_and_nothing_else(data, tmp_path):
    stale = tmp_path / f".out.tmp-{dead_pid()}"
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a running process: perhaps another run exporting now
    live.mkdir()
    decoys = [".out.tmp-12x", ".out.tmp-7.bak", ".outer.tmp-5", "out.tmp-5", ".other.tmp-5"]
    for name in decoys:
        (tmp_path / name).mkdir()
    (tmp_path / ".out.tmp-99999999").write_text("a file, not our folder")

    with pytest.warns(DreamBoothWarning) as caught:
        result = train_dreambooth(make_config(data, tmp_path), progress=False)
    messages = [str(w.message) for w in caught]
    assert any(f"removed '{stale}', a half-written export" in m for m in messages)
    assert any(f"'{live}' looks like a half-written export, but process {os.getppid()} is running" in m
               for m in messages)
    assert not stale.exists() and live.is_dir() and result.finished
    assert all((tmp_path / name).is_dir() for name in decoys)
    assert (tmp_path / ".out.tmp-99999999").read_text() == "a file, not our folder"


# --------------------------------------------------------------------------- a damaged checkpoint


def cut_short(checkpoint: Path, name: str = "unet_lora.safetensors") -> None:
    """What a full disk or an interrupted copy leaves: the first half of the file."""
    path = checkpoint / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "weights cut short": (lambda folder: cut_short(folder), "unet_lora.safetensors is cut short"),
    "optimizer cut short": (lambda folder: cut_short(folder, "optimizer.bin"), "optimizer.bin is cut short"),
    "state missing": (lambda folder: (folder / "training_state.json").unlink(), "training_state.json is missing"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_whole_one(data, tmp_path, damage):
    settings = dict(max_train_steps=4, checkpointing_steps=1, checkpoints_total_limit=3)
    straight = train_dreambooth(make_config(data, tmp_path, "straight", **settings), progress=False)
    first = train_dreambooth(make_config(data, tmp_path, **settings), progress=False, stop_at_step=3)
    assert [step for step, _ in dreambooth.checkpoint_folders(first.run_dir)] == [1, 2, 3]
    damage_folder, problem = DAMAGES[damage]
    damage_folder(first.run_dir / "checkpoint-3")

    with pytest.raises(ValueError, match=f"checkpoint-3' is damaged \\({problem}"):
        train_dreambooth(make_config(data, tmp_path, resume_from_checkpoint=str(first.run_dir / "checkpoint-3"),
                                     **settings), progress=False)
    with pytest.warns(DreamBoothWarning, match=f"checkpoint-3' \\({problem}.*resuming from .*checkpoint-2' instead"):
        result = train_dreambooth(make_config(data, tmp_path, resume_from_checkpoint="latest", **settings),
                                  progress=False)
    assert result.resumed_from_step == 2 and result.global_step == 4 and result.losses == straight.losses[2:]
    assert dreambooth.checkpoint_problem(result.run_dir / "checkpoint-3") is None  # trained past it again


def test_no_whole_checkpoint_is_a_clear_error(data, tmp_path):
    settings = dict(max_train_steps=4, checkpointing_steps=1, checkpoints_total_limit=2)
    first = train_dreambooth(make_config(data, tmp_path, **settings), progress=False, stop_at_step=2)
    for _, folder in dreambooth.checkpoint_folders(first.run_dir):
        cut_short(folder)
    with pytest.raises(ValueError, match="every checkpoint in run_dir=.* is damaged: .*checkpoint-2.*checkpoint-1"
                                         ".*resume_from_checkpoint=None"):
        train_dreambooth(make_config(data, tmp_path, resume_from_checkpoint="latest", **settings), progress=False)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("changes, message", [
    (dict(learning_rate=math.nan), "learning_rate=nan must be a finite number"),
    (dict(learning_rate=math.inf), "learning_rate=inf must be a finite number"),
    (dict(identifier_learning_rate=-math.inf), "identifier_learning_rate=-inf must be a finite number"),
    (dict(prior_loss_weight=math.nan), "prior_loss_weight=nan must be a finite number"),
    (dict(guidance_scale=math.inf), "guidance_scale=inf must be a finite number"),
    (dict(offset_noise=math.nan), "offset_noise=nan must be a finite number"),
    (dict(snr_gamma=math.inf), "snr_gamma=inf must be a finite number"),
    (dict(max_grad_norm=math.nan), "max_grad_norm=nan must be a finite number"),
    (dict(max_grad_norm=0.0), "max_grad_norm=0.0 must be positive"),
    (dict(adam_beta1=1.0), "adam_beta1=1.0 must be at least 0 and below 1"),
    (dict(adam_epsilon=-1e-8), "adam_epsilon=-1e-08 must be zero or positive"),
    (dict(adam_weight_decay=math.inf), "adam_weight_decay=inf must be a finite number"),
    (dict(learning_rate="1e-4"), "learning_rate='1e-4' is a string: write the number itself"),
    (dict(learning_rate=[1e-4]), "learning_rate=\\[0.0001\\] must be a finite number"),
    (dict(max_train_steps=-1), "max_train_steps=-1 must be a whole number of at least 1"),
    (dict(max_train_steps=2.5), "max_train_steps=2.5 must be a whole number"),
    (dict(max_train_steps="10"), "max_train_steps='10' must be a whole number"),
    (dict(train_batch_size=0), "train_batch_size=0 must be a whole number of at least 1"),
    (dict(num_class_images=0), "num_class_images=0 must be a whole number of at least 1"),
    (dict(sample_batch_size=-2), "sample_batch_size=-2 must be a whole number of at least 1"),
    (dict(num_inference_steps=0), "num_inference_steps=0 must be a whole number of at least 1"),
    (dict(checkpointing_steps=True), "checkpointing_steps=True must be a whole number"),
    (dict(resolution=0), "resolution=0 must be a number of pixels"),
    (dict(resolution=-64), "resolution=-64 must be a number of pixels"),
    (dict(rank=0), "rank=0 must be a whole number of at least 1"),
    (dict(lr_warmup_steps=-5), "lr_warmup_steps=-5 must be zero or positive"),
    (dict(seed=-1), "seed=-1 must be zero or positive"),
    (dict(lora_target_modules="to_q"), "lora_target_modules='to_q' must be a list of module names"),
    (dict(validation_prompt=7), "validation_prompt=7 must be a prompt or a list of prompts"),
    (dict(use_lora="False"), "use_lora='False' must be True or False"),
    (dict(output_dir=""), "output_dir='' must be a folder path"),
    (dict(model=None), "model=None must be a model name"),
    (dict(model=3), "model=3 must be a model name"),
])
def test_numbers_that_cannot_be_right_are_refused_before_anything_is_written(data, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        train_dreambooth(make_config(data, tmp_path, **changes), progress=False)
    assert written(tmp_path) == []


@pytest.mark.parametrize("stop_at_step", [0, -3, 1.5, True])
def test_stop_at_step_below_one_is_refused(data, tmp_path, stop_at_step):
    with pytest.raises(ValueError, match=f"stop_at_step={stop_at_step!r} must be a whole number of at least 1"):
        train_dreambooth(make_config(data, tmp_path), progress=False, stop_at_step=stop_at_step)
    assert written(tmp_path) == []


def test_yaml_numbers_are_parsed_or_refused_by_name(data, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-4\nprior_loss_weight: 1e0\nmax_train_steps: '12'\n")
    config = DreamBoothConfig.from_file(path)  # YAML 1.1 reads 1e-4 and 1e0 as strings
    assert (config.learning_rate, config.prior_loss_weight, config.max_train_steps) == (1e-4, 1.0, 12)
    for text, message in [("max_train_steps: 1e3", "max_train_steps='1e3' is not a whole number"),
                          ("learning_rate: fast", "learning_rate='fast' is not a number")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            DreamBoothConfig.from_file(path)
    path.write_text("guidance_scale: .inf\n")  # a real YAML infinity reaches the check
    config = dataclasses.replace(make_config(data, tmp_path), guidance_scale=DreamBoothConfig.from_file(path).guidance_scale)
    with pytest.raises(ValueError, match="guidance_scale=inf must be a finite number"):
        train_dreambooth(config, progress=False)
    assert cli.main(["dreambooth", "--instance-data-dir", str(data / "instance"), "--output-dir",
                     str(tmp_path / "out"), "--set", "learning_rate=.nan"]) == 2
    assert "learning_rate=nan must be a finite number" in capsys.readouterr().err
    assert cli.main(["dreambooth", "--instance-data-dir", str(data / "instance"), "--output-dir",
                     str(tmp_path / "out"), "--stop-at-step", "0"]) == 2
    assert "stop_at_step=0 must be a whole number of at least 1" in capsys.readouterr().err
    assert written(tmp_path) == []


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_diverged_weights_are_an_error_that_names_the_learning_rate_and_export_nothing(data, tmp_path, use_lora):
    config = make_config(data, tmp_path, use_lora=use_lora, learning_rate=1e30, max_train_steps=3)
    with pytest.raises(ValueError, match="training diverged: .* NaN or infinite after step 3.*learning rate "
                                         "\\(1e\\+30\\) is probably too high.*Nothing was exported"):
        train_dreambooth(config, progress=False)
    assert written(tmp_path) == ["out-run"]


# --------------------------------------------------------------------------- the other entry points


def test_a_complete_read_only_class_cache_is_used_without_writing(data, tmp_path, monkeypatch):
    """Only a class_data_dir that still lacks images must be writable (a shared read-only cache is fine)."""
    train_dreambooth(make_config(data, tmp_path, "first"), progress=False)  # fills data/class
    real = dreambooth.checks.tempfile.mkstemp

    def mkstemp(prefix, dir):
        if Path(dir) == data / "class":
            raise PermissionError(13, "Permission denied")
        return real(prefix=prefix, dir=dir)

    monkeypatch.setattr(dreambooth.checks.tempfile, "mkstemp", mkstemp)
    assert train_dreambooth(make_config(data, tmp_path), progress=False).finished
    with pytest.raises(ValueError, match="class_data_dir=.* cannot be written"):  # one image short
        train_dreambooth(make_config(data, tmp_path, "more", num_class_images=4), progress=False)


@pytest.mark.parametrize("call, message", [
    (lambda pipe: dreambooth_eval.subject_scenes(0), "n=0 must be a whole number of at least 1"),
    (lambda pipe: dreambooth_eval.subject_scenes(2.5), "n=2.5 must be a whole number of at least 1"),
    (lambda pipe: dreambooth_eval.write_concept_images("never-written", n=-1), "n=-1 must be a whole number"),
    (lambda pipe: dreambooth_eval.concept_scores(pipe, seeds=[]), "seeds=\\[\\] must be a non-empty list"),
    (lambda pipe: dreambooth_eval.concept_scores(pipe, seeds=3), "seeds=3 must be a list of seeds, e.g. range\\(3\\) or \\[3\\]"),
    (lambda pipe: dreambooth_eval.concept_scores(pipe, class_seeds="0"), "class_seeds='0' must be a list of seeds"),
    (lambda pipe: dreambooth_eval.concept_scores(pipe, num_inference_steps=0), "num_inference_steps=0 must be"),
    (lambda pipe: dreambooth_eval.concept_scores(pipe, num_inference_steps=-1), "num_inference_steps=-1 must be"),
    (lambda pipe: dreambooth_eval.concept_scores(pipe, guidance_scale=math.nan), "guidance_scale=nan must be a finite"),
    (lambda pipe: dreambooth_eval.concept_scores(pipe, guidance_scale="7.5"), "guidance_scale='7.5' must be a finite"),
    (lambda pipe: dreambooth_eval.concept_scores(pipe, colour="pink"), "colour='pink' is not one of"),
    (lambda pipe: dreambooth_eval.concept_report(pipe, pipe, seeds=[]), "seeds=\\[\\] must be a non-empty list"),
    (lambda pipe: dreambooth.load_images("anywhere", 0), "resolution=0 must be a whole number of pixels"),
    (lambda pipe: dreambooth.load_lora_output(pipe, "nowhere"), "folder='nowhere' holds no LoRA weights"),
])
def test_evaluation_and_loading_refuse_bad_arguments_before_any_work(tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dreambooth_eval, "_judged", lambda *a, **k: pytest.fail("generated before checking"))
    with pytest.raises(ValueError, match=message):
        call(tiny())
    assert list(tmp_path.iterdir()) == []


def test_a_full_fine_tune_given_to_load_lora_output_says_how_to_load_it(data, tmp_path):
    result = train_dreambooth(make_config(data, tmp_path, use_lora=False, max_train_steps=1), progress=False)
    with pytest.raises(ValueError, match="full fine-tune, load it with StableDiffusionPipeline.from_pretrained"):
        dreambooth.load_lora_output(tiny(), result.output_dir)


def test_python_m_sdcourse_dreambooth_bad_config_is_a_short_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sdcourse.dreambooth", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit, match="sdcourse.dreambooth: error: config file .*missing.yaml' does not exist"):
        runpy.run_module("sdcourse.dreambooth", run_name="__main__")
    (tmp_path / "c.yaml").write_text("learning_rate: .nan\ninstance_data_dir: x\n")
    monkeypatch.setattr(sys, "argv", ["sdcourse.dreambooth", str(tmp_path / "c.yaml")])
    with pytest.raises(SystemExit, match="learning_rate=nan must be a finite number"):
        runpy.run_module("sdcourse.dreambooth", run_name="__main__")


@pytest.mark.skipif(not mini_available(), reason="mini-SD is not trained yet")
def test_a_folder_called_mini_in_the_working_directory_does_not_hide_mini_sd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mini" / "instance").mkdir(parents=True)  # a learner's project folder, not a pipeline
    pipe = dreambooth.load_base_pipeline("mini")
    assert pipe.unet.config.block_out_channels == load_pipeline("mini").unet.config.block_out_channels
