"""Whatever a run cannot do is refused before any model work, with the way out: each refusal
of evaluate, audit and predict with its message, and proof that no weights were loaded, no
image or text was encoded and no classifier was built before it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipure_core import AttackConfig, InputError, Playground
from clipure_core import classifier as classifier_module
from clipure_core import cli as predict_cli
from clipure_core.audit import cli as audit_cli
from clipure_core.audit import run_audit
from clipure_core.backbone import Backbone
from clipure_core.evaluate import runner as evaluate_runner
from clipure_core.evaluate.cli import main as evaluate_main

from .conftest import ASSETS

FEWER = "pgd, pgd-l2, fgsm, apgd-ce, apgd-dlr, square, noise"  # what 3 classes allow
PROTOCOL_WAY_OUT = (
    "The protocol fixes its attacks; to choose one, use --protocol custom --attack NAME."
)


def forbid_model_work(monkeypatch) -> None:
    """From now on, loading weights, encoding an image or a text, or building a classifier's
    text embeddings (even from the cache) fails the test."""

    def forbidden(what: str):
        def fail(*_args, **_kwargs):
            raise AssertionError(f"model work before the refusal: {what}")

        return fail

    for module in (predict_cli, audit_cli, evaluate_runner):
        monkeypatch.setattr(module, "load_backbone", forbidden("weights loaded"))
    for method in ("encode_image", "encode_text", "normalized_text"):
        monkeypatch.setattr(Backbone, method, forbidden(method))
    monkeypatch.setattr(classifier_module, "class_embeddings", forbidden("class embeddings"))


@pytest.fixture
def no_model_work(monkeypatch):
    forbid_model_work(monkeypatch)


def folder_of(root, classes: list[str]):
    """An ImageFolder with two 8x8 images per class."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def three_classes(tmp_path):
    return folder_of(tmp_path / "three", ["cat", "dog", "bird"])


def evaluate(capsys, data, out, *extra) -> tuple[int, str]:
    args = ["--data", str(data), "--model", "ViT-B-32", "--pretrained", "random"]
    code = evaluate_main([*args, "--out", str(out), "--no-progress", *extra])
    return code, capsys.readouterr().err


# --- evaluate ---------------------------------------------------------------------------------


def test_release_protocol_on_three_classes_is_refused_before_the_model(
    no_model_work, three_classes, tmp_path, capsys
):
    out = tmp_path / "release"
    code, err = evaluate(capsys, three_classes, out, "--protocol", "release")
    assert code == 2
    assert err == (
        "error: --protocol release: autoattack needs at least 4 class labels; 3 given. "
        "Give 4 or more classes (a data set with more); "
        f"or use an attack that needs fewer ({FEWER}). "
        f"{PROTOCOL_WAY_OUT}\n"
    )
    assert not out.exists()  # not even the run's settings were written


@pytest.mark.parametrize(
    ("classes", "extra", "message"),
    [
        (
            ["cat", "dog", "bird"],
            ["--attack", "apgd-t"],
            "apgd-t needs at least 4 class labels; 3 given. "
            "Give 4 or more classes (a data set with more); "
            f"or use an attack that needs fewer ({FEWER}).",
        ),
        (  # the default attack, AutoAttack, runs APGD-T
            ["cat", "dog", "bird"],
            [],
            "autoattack needs at least 4 class labels; 3 given. "
            "Give 4 or more classes (a data set with more); "
            f"or use an attack that needs fewer ({FEWER}).",
        ),
        (
            ["cat", "dog"],
            ["--attack", "apgd-dlr"],
            "apgd-dlr needs at least 3 class labels; 2 given. Give 3 or more classes (a data set "
            "with more); or use an attack that needs fewer (pgd, pgd-l2, fgsm, apgd-ce, square, "
            "noise).",
        ),
        (  # adaptive runs AutoAttack under every threat
            ["cat", "dog", "bird"],
            ["--protocol", "adaptive"],
            "--protocol adaptive: autoattack needs at least 4 class labels; 3 given. "
            "Give 4 or more classes (a data set with more); "
            f"or use an attack that needs fewer ({FEWER}). {PROTOCOL_WAY_OUT}",
        ),
    ],
    ids=["apgd-t", "autoattack", "apgd-dlr", "adaptive"],
)
def test_attacks_needing_more_classes_are_refused_before_the_model(
    no_model_work, tmp_path, capsys, classes, extra, message
):
    code, err = evaluate(capsys, folder_of(tmp_path / "data", classes), tmp_path / "out", *extra)
    assert (code, err) == (2, f"error: {message}\n")


def test_a_resume_with_other_flags_is_refused_before_the_model(
    tiny_model_dir, image_folder, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    args = [
        "--data",
        str(image_folder),
        "--model",
        f"local-dir:{tiny_model_dir}",
        "--out",
        str(out),
    ]
    args += ["--templates", "single", "--attack", "pgd", "--steps", "1", "--defense", "none"]
    args += ["--threat", "transfer", "--num-images", "4", "--no-progress"]
    assert evaluate_main(args) == 0
    forbid_model_work(monkeypatch)
    assert evaluate_main([*args, "--eps", "8"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {out} holds a run with other settings (attack.eps: [4.0] -> [8.0]; "
        "attack.eps_pixels: [0.01568627450980392] -> [0.03137254901960784]). "
        f"Use another --out, or delete {out / 'partial'} to start this run over.\n"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--templates", "a photo"],
            "template 'a photo' must contain exactly one '{}' for the class name; "
            "presets: ensemble, single.",
        ),
        (
            ["--defense", "none,jpeg"],
            "unknown defence 'jpeg': use one of clipure_cos, clipure_diff, or "
            "package.module:Class.",
        ),
        (
            ["--attack", "square", "--eot", "2"],
            "square does not average gradients over samples (no EOT); "
            "use autoattack, apgd-ce or pgd with eot_samples.",
        ),
        (
            ["--protocol", "release", "--cos-batch-coupled"],
            "--protocol release fixes batch coupling (--cos-batch-coupled, "
            "--diff-batch-coupled) = False (the release threat runs the batch-coupled "
            "purification itself, on its own copy; the flag would couple the run's own model "
            "too); drop that flag or use --protocol custom.",
        ),
        (
            ["--protocol", "release", "--precision", "fp16"],
            "--protocol release fixes precision = fp32 (the run's model stays float32; the "
            "release threat casts its own copy of the backbone parts to float16); drop that "
            "flag or use --protocol custom.",
        ),
    ],
    ids=["template", "defence", "eot-square", "release-coupled", "release-fp16"],
)
def test_bad_flags_are_refused_before_the_data_and_model(
    no_model_work, tmp_path, capsys, extra, message
):
    # the data folder does not even exist: the flags are refused first
    code, err = evaluate(capsys, tmp_path / "nowhere", tmp_path / "out", *extra)
    assert (code, err) == (2, f"error: {message}\n")


# --- predict ----------------------------------------------------------------------------------


def predict(capsys, *extra) -> tuple[int, str]:
    code = predict_cli.main(["predict", str(ASSETS / "chelsea.png"), *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--labels", "cat, dog, car", "--attack", "apgd-t"],
            "apgd-t needs at least 4 class labels; 3 given. "
            f"Give 4 or more labels; or use an attack that needs fewer ({FEWER}).",
        ),
        (["--labels", "cat"], "pgd needs at least 2 class labels; 1 given. Give 2 or more labels."),
        (
            ["--labels", "cat, dog", "--target", "bird"],
            "label 'bird' is not in the label list (cat, dog).",
        ),
        (
            ["--labels", "cat, dog", "--true-label", "bird"],
            "label 'bird' is not in the label list (cat, dog).",
        ),
        (
            ["--labels", "cat, dog", "--attack", "apgd-ce", "--target", "dog"],
            "a target class works with pgd, pgd-l2, fgsm; apgd-ce is untargeted "
            "(APGD-T picks its own targets).",
        ),
        (
            ["--labels", "cat, dog", "--attack", "pgd-l2", "--eot", "2"],
            "torchattacks has no EOT variant of PGD-L2; use apgd-ce with norm l2.",
        ),
        (
            ["--labels", "cat, dog", "--defense", "clipure_cos,jpeg"],
            "unknown defence 'jpeg': use one of clipure_cos, clipure_diff, or "
            "package.module:Class.",
        ),
        (
            ["--labels", "cat, dog", "--seed", "-1"],
            "seed must be an integer from 0 to 2**63 - 1, got -1.",
        ),
        (
            ["--labels", "cat, dog", "--templates", "a photo"],
            "template 'a photo' must contain exactly one '{}' for the class name; "
            "presets: ensemble, single.",
        ),
    ],
    ids=[
        "apgd-t",
        "one-label",
        "target",
        "true-label",
        "untargeted",
        "eot-l2",
        "defence",
        "seed",
        "template",
    ],
)
def test_predict_refuses_before_loading_weights(no_model_work, capsys, extra, message):
    assert predict(capsys, *extra) == (2, f"error: {message}\n")


# --- the engine: Playground.run and run_audit ----------------------------------------------------


@pytest.fixture
def playground(backbone):
    return Playground(backbone, "single")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            {"labels": "cat, dog, car", "attack": AttackConfig("apgd-t", steps=2)},
            r"^apgd-t needs at least 4 class labels; 3 given\. Give 4 or more labels; ",
        ),
        (
            {"labels": "cat, dog", "target_label": "bird"},
            r"^label 'bird' is not in the label list \(cat, dog\)\.$",
        ),
        (
            {"labels": "cat, dog", "true_label": "bird"},
            r"^label 'bird' is not in the label list \(cat, dog\)\.$",
        ),
        (
            {"labels": "cat, dog", "defense_settings": {"clipure_cos": {"steps": -1}}},
            r"^CLIPure-Cos steps: an integer from 0 to 1000\.$",
        ),
    ],
    ids=["apgd-t", "target", "true-label", "defence-setting"],
)
def test_playground_refuses_before_encoding(
    playground, no_model_work, cat_photo, request_, message
):
    with pytest.raises(InputError, match=message):
        playground.run(cat_photo, **request_)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"true_label": "bird"},
            r"^label 'bird' is not in the label list \(cat, dog\)\.$",
        ),
        (
            {"norm": "l2", "eps": 0.5, "eot": 2},
            r"^torchattacks has no EOT variant of PGD-L2; use apgd-ce with norm l2\. "
            r"In the audit: eot 1, or norm linf\.$",
        ),
        (
            {"defense_settings": {"clipure_cos": {"steps": -1}}},
            r"^CLIPure-Cos steps: an integer from 0 to 1000\.$",
        ),
    ],
    ids=["true-label", "eot-l2", "defence-setting"],
)
def test_audit_refuses_before_encoding(playground, no_model_work, cat_photo, options, message):
    with pytest.raises(InputError, match=message):
        run_audit(playground, cat_photo, "cat, dog", **options)


def test_audit_of_a_missing_folder_is_refused_before_loading_weights(
    no_model_work, tmp_path, capsys
):
    code = predict_cli.main(["audit", "--data", str(tmp_path / "nowhere"), "--model", "ViT-B-32"])
    assert code == 2
    assert capsys.readouterr().err.startswith(
        f"error: --data '{tmp_path / 'nowhere'}': not a folder"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--conditions", "noise", "--checks", "noise_control"],
            "audit check 'noise_control' compares conditions that are not run: add one of "
            "transfer, release, paper, bpda, full to the conditions, or leave the check out.",
        ),
        (
            ["--conditions", "transfer,full", "--checks", "white_box_vs_black_box"],
            "audit check 'white_box_vs_black_box' compares conditions that are not run: add "
            "'square' to the conditions, or leave the check out.",
        ),
        (
            ["--conditions", "transfer", "--checks", "bpda_validity,zero_gradients"],
            "audit check 'bpda_validity' compares conditions that are not run: add 'bpda' to "
            "the conditions, or leave the check out.",
        ),
    ],
    ids=["noise-control", "white-box-vs-black-box", "bpda-validity"],
)
def test_audit_checks_without_their_conditions_are_refused_before_loading_weights(
    no_model_work, capsys, extra, message
):
    photo = str(ASSETS / "chelsea.png")
    code = predict_cli.main(["audit", photo, "--labels", "cat, dog", *extra])
    assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")


def test_audit_checks_left_to_default_say_which_could_not_run(playground, cat_photo):
    result = run_audit(playground, cat_photo, "cat, dog", conditions="noise", steps=1, defenses="")
    assert "noise_control" not in {check.name for check in result.checks}
    assert result.notices[-1] == (
        "checks not run, their conditions are not in this audit: bpda_validity (needs "
        "'bpda'); white_box_vs_black_box (needs 'square'); noise_control (needs one of "
        "transfer, release, paper, bpda, full); single_step_vs_iterative (needs 'full')."
    )
