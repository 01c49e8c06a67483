"""The command line's text-embedding progress (predict, evaluate) and `cache-text`, which
fills the cache that the app and later runs read."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from clipure_core import load_backbone
from clipure_core import text_embeddings as cache
from clipure_core.cli import main
from clipure_core.evaluate.cli import main as evaluate_main
from clipure_core.prompts import TEMPLATE_PRESETS, null_prompts

from .conftest import ASSETS, TINY_MODEL
from .test_evaluate_run import base_args

ENSEMBLE = TEMPLATE_PRESETS["ensemble"]


@pytest.fixture(autouse=True)
def empty_text_cache(monkeypatch, tmp_path):
    """Each test starts from empty text caches (memory and disk), whatever ran before."""
    monkeypatch.setenv("CLIPURE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_MEMORY", OrderedDict())


def test_cache_text_fills_the_cache_with_a_progress_bar(tiny_checkpoint, capsys):
    args = ["cache-text", "--labels", "aardvark, axolotl, agouti", "--model", TINY_MODEL]
    args += ["--pretrained", str(tiny_checkpoint), "--device", "cpu"]
    backbone = load_backbone(TINY_MODEL, str(tiny_checkpoint), device="cpu")
    groups = cache.class_prompt_groups(["aardvark", "axolotl", "agouti"], ENSEMBLE)
    groups.append(null_prompts(ENSEMBLE))
    missing = cache.missing_prompts(backbone, groups)
    assert missing == 320
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"3 labels x 80 templates and the null prompt: {missing} prompts encoded" in (
        captured.out
    )
    assert f"{320 - missing} were cached" in captured.out
    assert str(cache.cache_root()) in captured.out
    assert "text embeddings" in captured.err and f"{missing}/{missing}" in captured.err
    assert cache.missing_prompts(backbone, groups) == 0
    assert main([*args[:2], "axolotl, agouti, alpaca", *args[3:]]) == 0
    assert "80 prompts encoded" in capsys.readouterr().out  # only the new label
    assert main(["cache-text", "--labels", "", "--model", TINY_MODEL]) == 2
    assert "at least one class name" in capsys.readouterr().err


def test_predict_shows_text_progress(tiny_checkpoint, capsys):
    args = ["predict", str(ASSETS / "chelsea.png"), "--labels", "bongo, okapi, gerenuk"]
    args += ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--steps", "1"]
    backbone = load_backbone(TINY_MODEL, str(tiny_checkpoint), device="cpu")
    groups = cache.class_prompt_groups(["bongo", "okapi", "gerenuk"], ENSEMBLE)
    assert cache.missing_prompts(backbone, groups) == 240
    code = main(args)
    assert code == 0
    err = capsys.readouterr().err
    assert "text embeddings" in err and "240/240" in err  # the labels' bar (then the null's)
    assert cache.missing_prompts(backbone, groups) == 0


def test_evaluate_shows_text_progress(tiny_model_dir, image_folder, tmp_path, capsys):
    args = base_args(tiny_model_dir, image_folder, tmp_path / "run")
    args = [arg for arg in args if arg != "--no-progress"]
    args[args.index("--templates") + 1] = "ensemble"
    args[args.index("--eps") + 1] = "4"
    args[args.index("--threat") + 1] = "transfer"
    args[args.index("--steps") + 1] = "1"
    assert evaluate_main(args) == 0
    err = capsys.readouterr().err
    assert "text embeddings" in err and "320/320" in err  # 4 classes x 80 templates
