"""docs/output-fields.md against real output of the tiny models, both ways: no undocumented
key, no documented key that the code no longer makes (see tools/output_fields.py)."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest

from app.outputs import result_payload
from clipure_core import AttackConfig, Playground
from clipure_core.audit.dataset import audit_dataset
from clipure_core.cli import main as predict_main
from clipure_core.evaluate.cli import main as evaluate_main
from clipure_core.evaluate.data import load_dataset
from clipure_core.train_prior import main as train_prior_main
from tools.output_fields import DOC, compare, documented_fields

from .conftest import ASSETS, LABELS

# fast settings: every key appears, the numbers do not matter here
DEFENSES = ("clipure_cos", "clipure_diff")
AUDIT = {"eps": 4 / 255, "steps": 1, "square_queries": 2, "defenses": DEFENSES}  # data set
QUICK_CHECKS = (
    "zero_gradients,bpda_validity,white_box_vs_black_box,single_step_vs_iterative,randomness"
)


@pytest.fixture(scope="module")
def prior(tiny_model_dir, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "tiny.safetensors"
    args = ["--model", f"local-dir:{tiny_model_dir}", "--images", str(image_folder), "--out"]
    args += [str(out), "--epochs", "1", "--batch-size", "4", "--depth", "1", "--heads", "1"]
    assert train_prior_main([*args, "--dim-head", "8", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def playground(tiny_model_dir):
    from clipure_core import load_backbone

    return Playground(load_backbone(f"local-dir:{tiny_model_dir}", device="cpu"), "single")


def settings_for(prior) -> dict:
    return {"clipure_diff": {"prior": str(prior), "steps": 1}, "clipure_cos": {"steps": 2}}


def audit_json(model_dir, prior) -> dict:
    """`python -m clipure_core audit IMAGE ... --curve --json`, as printed."""
    args = ["audit", str(ASSETS / "chelsea.png"), "--labels", ",".join(LABELS), "--model"]
    args += [f"local-dir:{model_dir}", "--templates", "single", "--steps", "1"]
    args += ["--square-queries", "2", "--defense", ",".join(DEFENSES), "--prior", str(prior)]
    args += ["--diff-steps", "1", "--cos-steps", "2", "--checks", QUICK_CHECKS, "--curve"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert predict_main([*args, "--quiet", "--json"]) == 0
    return json.loads(printed.getvalue())


def as_json(value: object) -> object:
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def outputs(playground, prior, image_folder, tiny_model_dir, tmp_path_factory, cat_photo):
    """Each documented output, made for real (several runs where keys depend on the run)."""
    made: dict[str, list] = {}
    result = playground.run(
        cat_photo,
        LABELS,
        attack=AttackConfig("pgd", "linf", 4 / 255, 1),
        threat="transfer",
        defenses=list(DEFENSES),
        defense_settings=settings_for(prior),
    )
    made["playground"] = [as_json(result.to_dict())]
    made["app-api"] = [as_json(result_payload(result, ", ".join(LABELS), None))]
    made["audit"] = [audit_json(tiny_model_dir, prior)]  # the CLI's: with --curve
    dataset = load_dataset(str(image_folder), None, None)
    report = audit_dataset(
        playground,
        dataset,
        num_images=2,
        conditions="transfer,full",
        checks="zero_gradients,randomness",  # the keys do not depend on which checks ran
        defense_settings=settings_for(prior),
        **AUDIT,
    )
    made["audit-dataset"] = [as_json(report.to_dict())]
    made["results"], made["per-image-csv"] = [], []
    base = ["--data", str(image_folder), "--model", f"local-dir:{tiny_model_dir}", "--templates"]
    base += ["single", "--num-images", "4", "--batch-size", "4", "--attack", "pgd", "--steps"]
    base += ["1", "--no-progress", "--prior", str(prior), "--diff-steps", "1"]
    runs = [
        ["--threat", "transfer,bpda", "--defense", "none,clipure_cos,clipure_diff"],
        ["--attack-seeds", "2", "--eval-draws", "2", "--defense", "none,clipure_diff"],
    ]
    for i, extra in enumerate(runs):
        out = tmp_path_factory.mktemp(f"run{i}")
        assert evaluate_main([*base, *extra, "--out", str(out)]) == 0
        made["results"].append(json.loads((out / "results.json").read_text()))
        with open(out / "per_image.csv", newline="") as handle:
            made["per-image-csv"].append(dict.fromkeys(next(csv.reader(handle))))
    return made


def test_every_output_matches_its_documented_fields(outputs):
    documented = documented_fields(DOC.read_text())
    assert sorted(documented) == sorted(outputs)
    problems = []
    for name, values in outputs.items():
        undocumented, missing = compare(values, ["[]." + p for p in documented[name]])
        problems += [f"{name}: undocumented {path[3:]}" for path in undocumented]
        problems += [f"{name}: documented but not made {path[3:]}" for path in missing]
    assert problems == [], "docs/output-fields.md and the code disagree:\n" + "\n".join(problems)


def test_the_comparison_names_undocumented_and_vanished_keys():
    made = {"a": {"b": 1, "c": [{"d": 2}, {"d": 3}]}, "m": {"cat": {"x": 1}, "dog": {"x": 2}}}
    made["v"] = {"any": 1, "thing": {"deep": 2}}
    documented = ["a.b", "a.c[].d", "m.<name>.x", "v.*"]
    assert compare(made, documented) == ([], [])
    made["a"]["new"] = 4  # a key the code added and the page does not list
    del made["m"]["cat"]["x"], made["m"]["dog"]["x"]  # a key the code no longer makes
    assert compare(made, documented) == (["a.new"], ["m.<name>.x"])


def test_tables_are_read_per_marker_and_shared_tables_count_for_each():
    page = (
        "<!-- fields: one two -->\n| path | meaning |\n|---|---|\n| `a.b` | x |\n\n"
        "text naming a marker: `<!-- fields: three -->`\n| `not.a.row` | outside a table |\n"
        "<!-- fields: two -->\n| path | meaning |\n|---|---|\n| `c[].d` | y |\n"
    )
    assert documented_fields(page) == {"one": ["a.b"], "two": ["a.b", "c[].d"]}
