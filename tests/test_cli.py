"""`python -m clipure_core predict` in-process, and as a real subprocess for its errors."""

from __future__ import annotations

import json

from PIL import Image

from clipure_core.cli import main

from .conftest import ASSETS, TINY_MODEL, run_without_weights


def run(capsys, *args):
    code = main(["predict", str(ASSETS / "chelsea.png"), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_prints_a_verdict_per_model(capsys, tiny_checkpoint, tmp_path):
    png = tmp_path / "adv.png"
    code, out, _ = run(
        capsys,
        "--labels",
        "cat,dog,car",
        "--model",
        TINY_MODEL,
        "--pretrained",
        str(tiny_checkpoint),
        "--steps",
        "3",
        "--save-adversarial",
        str(png),
    )
    assert code == 0
    assert "pgd (linf, eps=4/255, 3 steps), threat: transfer" in out
    assert "  undefended: " in out and "  clipure_cos: " in out and " -> " in out
    assert Image.open(png).size == (32, 32)


def test_predict_json_has_the_result_schema(capsys, tiny_checkpoint):
    code, out, _ = run(
        capsys,
        "--labels",
        "cat,dog,car,bird",
        "--model",
        TINY_MODEL,
        "--pretrained",
        str(tiny_checkpoint),
        "--attack",
        "apgd-ce",
        "--norm",
        "l2",
        "--eps",
        "0.5",
        "--steps",
        "2",
        "--threat",
        "bpda",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["settings"]["attack"]["method"] == "apgd-ce"
    assert data["settings"]["attack"]["eps"] == 0.5 and data["settings"]["threat"] == "bpda"
    assert set(data["probabilities"]["adversarial"]) == {"undefended", "clipure_cos"}


def test_errors_are_one_message_and_exit_code_2(capsys, tiny_checkpoint, tmp_path):
    weights = ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint)]
    code, out, err = run(capsys, "--labels", " , ", *weights)
    assert code == 2 and out == "" and err.startswith("error: labels: give at least one")
    code, _, err = run(capsys, "--labels", "a,b", "--eps", "-3", *weights)
    assert code == 2 and "eps must be in" in err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = main(["predict", str(broken), "--labels", "a,b", *weights])
    assert code == 2 and "not a readable image" in capsys.readouterr().err


def test_no_internet_startup_exits_nonzero_with_the_options(tmp_path):
    args = ["-m", "clipure_core", "predict", str(ASSETS / "chelsea.png"), "--labels", "cat,dog"]
    completed = run_without_weights(args, tmp_path)
    assert completed.returncode == 2
    # one `error:` line and one `hint:` line, as docs/cli.md says
    error, hint = completed.stderr.splitlines()
    assert error.startswith("error: could not load weights 'openai' for ViT-B-32: tried ")
    assert "HF_HUB_OFFLINE is set" in error
    assert hint.startswith("hint: run once with internet access")
    assert "--pretrained random" in hint


def test_audit_takes_the_defense_flags_predict_has(capsys, tiny_checkpoint):
    args = ["audit", str(ASSETS / "chelsea.png"), "--labels", "cat,dog", "--model", TINY_MODEL]
    args += ["--pretrained", str(tiny_checkpoint), "--conditions", "clean", "--checks"]
    args += ["randomness", "--cos-batch-coupled", "--cos-steps", "3", "--quiet", "--json"]
    code = main(args)
    assert code == 0
    settings = json.loads(capsys.readouterr().out)["settings"]["defenses"]["clipure_cos"]
    assert settings == {"steps": 3, "step_size": 30.0, "batch_coupled": True}


def test_predict_parses_the_labels_once_and_keeps_the_duplicate_notice(
    capsys, tiny_checkpoint, monkeypatch
):
    from clipure_core import prompts

    calls = []
    original = prompts.parse_labels

    def counted(labels):
        calls.append(labels)
        return original(labels)

    for module in ("clipure_core.cli", "clipure_core.pipeline", "clipure_core.classifier"):
        monkeypatch.setattr(f"{module}.parse_labels", counted, raising=False)
    model = ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--steps", "1"]
    code, out, _ = run(capsys, "--labels", "cat, dog, cat", *model, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["labels"] == ["cat", "dog"]
    assert data["notices"] == ["1 duplicate label(s) removed."]
    # parsed at the entry only; the parsed Labels pass through the later calls as they are
    assert [label for label in calls if not isinstance(label, prompts.Labels)] == ["cat, dog, cat"]
