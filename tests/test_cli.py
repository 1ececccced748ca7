"""The `sdcourse` command line."""

import subprocess
import sys

from PIL import Image

from sdcourse import cli, models
from sdcourse.testing import tiny_pipeline


def test_generate_writes_the_image(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "load_pipeline", lambda name, task, device: tiny_pipeline(task))
    out = tmp_path / "out.png"
    assert cli.main(["generate", "a red circle on a blue background", "-o", str(out), "--steps", "2", "-q"]) == 0
    image = Image.open(out)
    assert image.size == (64, 64)


def test_generate_same_seed_same_pixels(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "load_pipeline", lambda name, task, device: tiny_pipeline(task))
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path, seed in zip(paths, ["1", "1", "2"]):
        cli.main(["generate", "a red circle", "-o", str(path), "--steps", "2", "--seed", seed, "-q"])
    a, b, c = (Image.open(p).tobytes() for p in paths)
    assert a == b and a != c


def test_several_images_get_numbered_names(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "load_pipeline", lambda name, task, device: tiny_pipeline(task))
    cli.main(["generate", "a red circle", "-o", str(tmp_path / "x.png"), "--steps", "2", "--num-images", "2", "-q"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_0.png", "x_1.png"]


def test_unknown_model_is_a_short_error_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sdcourse.cli", "generate", "x", "--model", "nonsense", "-o", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "sdcourse: error: Unknown model name='nonsense'" in result.stderr


def test_models_lists_short_names(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in models.REAL_MODELS:
        assert name in out
