"""Backbones as columns: `DEFENSE@BACKBONE` specs, each column a model on its own backbone in
predict, the audit, the app's handlers and its API; two tiny models with different weights."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from clipure_core import InputError, load_backbone
from clipure_core.audit import run_audit
from clipure_core.cli import main
from clipure_core.columns import column_title, home_ref, parse_column, parse_columns
from clipure_core.pipeline import Playground

from .conftest import ASSETS, TINY_CONFIG, TINY_MODEL, save_tiny_weights

LABELS = "cat, dog, car, airplane"
PHOTO = str(ASSETS / "chelsea.png")


def _model_dir(tmp_path_factory, name: str, seed: int, image_size: int = 32):
    folder = tmp_path_factory.mktemp(name)
    config = {**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "image_size": image_size}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    save_tiny_weights(folder / "open_clip_model.safetensors", seed=seed)
    return folder


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    """A second tiny model: the architecture of `tiny_model_dir`, other weights."""
    return _model_dir(tmp_path_factory, "other-model", seed=99)


@pytest.fixture(scope="module")
def large_dir(tmp_path_factory):
    """A tiny model taking 48 x 48 inputs (the start-up one takes 32 x 32)."""
    return _model_dir(tmp_path_factory, "large-model", seed=5, image_size=48)


def test_column_specs_name_the_defense_and_the_backbone(tmp_path):
    columns = parse_columns("clipure_cos, none@fare2-l14, clipure_cos@fare2-l14, clipure_cos")
    assert [c.name for c in columns] == ["clipure_cos", "none@fare2-l14", "clipure_cos@fare2-l14"]
    assert (columns[0].defense, columns[0].backbone) == ("clipure_cos", None)
    fare = columns[1].backbone
    assert (columns[1].defense, fare.name, fare.pretrained) == (
        None,
        "ViT-L-14",
        "hf-hub:chs20/fare2-clip",
    )
    # ARCH:PRETRAINED is split at its first colon only
    spelled = parse_column("none@ViT-L-14:hf-hub:chs20/fare2-clip").backbone
    assert (spelled.name, spelled.pretrained) == ("ViT-L-14", "hf-hub:chs20/fare2-clip")
    assert spelled.key == fare.key
    # `none` and the undefended model on the start-up backbone are the column every run has
    assert (
        parse_columns("none, none@fare2-l14", home_ref("ViT-L-14", "hf-hub:chs20/fare2-clip")) == []
    )
    # a column on the start-up backbone keeps its plain name, however the backbone is written
    home = home_ref(f"local-dir:{tmp_path}", "openai")
    (tmp_path / "open_clip_config.json").write_text("{}")
    assert parse_column(f"clipure_cos@local-dir:{tmp_path}/.", home).name == "clipure_cos"
    assert column_title("clipure_cos@fare2-l14") == "CLIPure-Cos @ fare2-l14"
    assert column_title("none@fare2-l14") == "Undefended CLIP @ fare2-l14"
    assert column_title("clipure_cos") == "CLIPure-Cos"
    # the defence half goes whole to the registry: a defence of one's own has a colon and dots
    with pytest.raises(InputError, match=r"defence 'no_such\.module:Thing' is not loaded"):
        parse_column("no_such.module:Thing@fare2-l14")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("none@fare9-b32", "unknown backbone 'fare9-b32'"),
        ("@fare2-l14", "both sides non-empty"),
        ("clipure_cos@", "both sides non-empty"),
        ("clipure_sin@fare2-l14", "unknown defence 'clipure_sin'"),
        ("none@local-dir:/no/such/folder", "not a folder with an open_clip_config.json"),
        ("none@NoSuchNet:openai", "unknown open_clip architecture 'NoSuchNet'"),
        ("none@ViT-B-32:", "both non-empty"),
    ],
)
def test_bad_column_specs_are_refused_before_any_weights(spec, message, tmp_path, capsys):
    with pytest.raises(InputError, match=message):
        parse_columns(["clipure_cos", spec])
    # the command line refuses it before it reads the photo's model (which does not exist)
    args = ["predict", PHOTO, "--labels", LABELS, "--model", "local-dir:/no/such/model"]
    code = main([*args, "--defense", f"clipure_cos,{spec}"])
    assert code == 2 and message.split("'")[0] in capsys.readouterr().err


def test_predict_shows_every_column_the_transfer_image(tiny_model_dir, other_dir, capsys):
    other = f"local-dir:{other_dir}"
    args = ["predict", PHOTO, "--labels", LABELS, "--model", f"local-dir:{tiny_model_dir}"]
    args += ["--defense", f"clipure_cos,none@{other},clipure_cos@{other}", "--steps", "2"]
    assert main([*args, "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = ["undefended", "clipure_cos", f"none@{other}", f"clipure_cos@{other}"]
    assert list(data["probabilities"]["adversarial"]) == names
    assert set(data["image_for"].values()) == {"undefended"}  # one image, crafted once
    assert list(data["adversarial_images"]) == ["undefended"]
    columns = data["settings"]["columns"]
    assert [columns[n]["defense"] for n in names] == ["none", "clipure_cos", "none", "clipure_cos"]
    assert columns["undefended"]["backbone"]["spec"] is None
    assert columns[f"none@{other}"]["backbone"]["spec"] == other
    assert columns[f"none@{other}"]["backbone"]["weights_id"].startswith("local-dir:")
    assert columns[f"none@{other}"]["backbone"]["memory_mb"] > 0
    assert list(data["settings"]["defenses"]) == ["clipure_cos", f"clipure_cos@{other}"]
    # FARE-style column = the other model run on its own: its clean probabilities are those
    # of a separate playground on that backbone (same 32 x 32 photo)
    alone = Playground(load_backbone(other, device="cpu")).run(
        Image.open(PHOTO), LABELS, defenses=[], seed=0
    )
    ours = data["probabilities"]["clean"][f"none@{other}"]
    assert ours == pytest.approx(alone.probabilities["clean"]["undefended"], rel=1e-5)
    assert ours != pytest.approx(data["probabilities"]["clean"]["undefended"], rel=1e-3)


def test_white_box_threats_attack_each_column_on_its_own(backbone, other_dir):
    other = f"none@local-dir:{other_dir}"
    result = Playground(backbone).run(
        Image.open(PHOTO), LABELS, threat="full", defenses=["clipure_cos", other], seed=0
    )
    assert result.models == ["undefended", "clipure_cos", other]
    assert result.image_for[other] == other
    assert set(result.adversarial_images) == {"undefended", "clipure_cos", other}
    mine, undefended = result.adversarial_images[other], result.adversarial_images["undefended"]
    assert mine.tobytes() != undefended.tobytes()  # crafted against the other backbone


def test_a_column_of_another_input_size_sees_the_image_resized(backbone, large_dir):
    column = f"clipure_cos@local-dir:{large_dir}"
    playground = Playground(backbone)
    for threat in ("transfer", "full"):
        result = playground.run(Image.open(PHOTO), LABELS, threat=threat, defenses=[column])
        assert result.models == ["undefended", column]
        assert {image.size for image in result.adversarial_images.values()} == {(32, 32)}
        for condition in ("clean", "adversarial"):
            assert sum(result.probabilities[condition][column]) == pytest.approx(1, abs=1e-5)
    assert playground.on_backbone(parse_column(column).backbone).backbone.image_size == 48
    # the backbone is loaded once: the second run found it in the playground
    assert len(playground._others) == 1


def test_audit_has_a_cell_per_condition_for_every_column(tiny_model_dir, other_dir, capsys):
    from clipure_core.audit import CONDITIONS

    other = f"local-dir:{other_dir}"
    columns = f"clipure_cos,none@{other},clipure_cos@{other}"
    args = ["audit", PHOTO, "--labels", LABELS, "--model", f"local-dir:{tiny_model_dir}"]
    args += ["--defense", columns, "--steps", "2", "--square-queries", "4", "--device", "cpu"]
    assert main([*args, "--checks", "randomness,softmax_output", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = ["undefended", "clipure_cos", f"none@{other}", f"clipure_cos@{other}"]
    assert [model["name"] for model in data["models"]] == names
    assert data["models"][2]["title"] == f"Undefended CLIP @ {other_dir.name}"
    assert data["models"][3]["title"] == f"CLIPure-Cos @ {other_dir.name}"
    assert [model["backbone"]["spec"] for model in data["models"]] == [None, None, other, other]
    cells = {(cell["condition"], cell["model"]) for cell in data["matrix"]}
    assert cells == {(condition, name) for condition in CONDITIONS for name in names}
    assert len(data["matrix"]) == 8 * 4


def test_audit_checklist_runs_each_column_on_its_backbone(backbone, other_dir):
    other = f"local-dir:{other_dir}"
    result = run_audit(
        Playground(backbone),
        Image.open(PHOTO),
        LABELS,
        steps=2,
        defenses=["clipure_cos", f"clipure_cos@{other}"],
        conditions="clean,bpda,full",
        checks="binarization,batch_coupling,bpda_validity",
    )
    subjects = {check.model for check in result.checks}
    assert {"clipure_cos", f"clipure_cos@{other}"} <= subjects
    assert result.settings["columns"][f"clipure_cos@{other}"]["backbone"]["spec"] == other


def test_app_shows_every_column_as_a_card(tiny_checkpoint, other_dir):
    from app.catalog import model_choices
    from app.handlers import Context, run
    from app.results import reproduce_command, verdict_html
    from app.service import PlaygroundService

    choices = model_choices(TINY_MODEL, str(tiny_checkpoint))
    other = f"local-dir:{other_dir}"
    values = {"image": PHOTO, "labels": LABELS, "steps": 2, "clipure_cos": True}
    # by default the page takes catalog aliases only: a folder is refused before it is read
    with pytest.raises(InputError, match="the page takes the catalog's backbones"):
        run(Context(PlaygroundService("cpu"), choices), {**values, "columns": f"none@{other}"})
    with pytest.raises(InputError, match="the page takes the catalog's backbones"):
        run(Context(PlaygroundService("cpu"), choices), {**values, "columns": "none@/etc"})
    context = Context(PlaygroundService("cpu", any_backbone=True), choices)
    result = run(context, {**values, "columns": f"none@{other}, clipure_cos@{other}"})
    assert result.models == ["undefended", "clipure_cos", f"none@{other}", f"clipure_cos@{other}"]
    payload = result.to_dict()
    cards = verdict_html(payload)
    assert cards.count('class="card ') == 4
    assert (
        f"Undefended CLIP @ {other_dir.name}" in cards
        and f"CLIPure-Cos @ {other_dir.name}" in cards
    )
    assert "MiB of weights" in cards  # what the other backbone costs
    command = reproduce_command(payload, LABELS, "chelsea.png")
    assert f"--defense clipure_cos,none@{other},clipure_cos@{other}" in command
    with pytest.raises(InputError, match="unknown backbone 'fare9'"):
        run(context, {**values, "columns": "none@fare9"})


def test_playground_api_takes_columns(client_for_columns, other_dir):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    other = f"local-dir:{other_dir}"
    arguments = {
        "labels": LABELS,
        "method": "pgd",
        "norm": "linf",
        "eps": 4,
        "steps": 2,
        "threat": "full",
        "seed": 0,
    }
    data = client_for_columns.predict(
        image=handle_file(PHOTO),
        defenses=f"clipure_cos,none@{other}",
        **arguments,
        api_name="/playground",
    )
    assert list(data["probabilities"]["clean"]) == ["undefended", "clipure_cos", f"none@{other}"]
    assert data["image_for"][f"none@{other}"] == f"none@{other}"
    with pytest.raises(AppError, match="both sides non-empty"):
        client_for_columns.predict(
            image=handle_file(PHOTO), defenses="none@", **arguments, api_name="/playground"
        )


def test_page_more_columns_box_adds_cards(client_for_columns, running_app, other_dir):
    from gradio_client import handle_file

    from .page import page_inputs, page_outputs

    other = f"local-dir:{other_dir}"
    inputs = page_inputs(
        running_app,
        Photo=handle_file(PHOTO),
        **{"Labels (comma-separated)": LABELS, "Attack steps": 2},
        **{"More columns (DEFENSE@BACKBONE)": f"none@{other}, clipure_cos@{other}"},
    )
    outputs = page_outputs(running_app, client_for_columns.predict(*inputs, api_name="/run"))
    verdict = outputs["verdict"]
    assert verdict.count('class="card ') == 4
    assert (
        f"Undefended CLIP @ {other_dir.name}" in verdict
        and f"CLIPure-Cos @ {other_dir.name}" in verdict
    )


@pytest.fixture(scope="module")
def client_for_columns(running_app):
    from gradio_client import Client

    return Client(running_app, verbose=False)


def test_evaluate_reports_every_column(tiny_model_dir, other_dir, image_folder, tmp_path):
    from clipure_core.evaluate.cli import main as evaluate

    other = f"local-dir:{other_dir}"

    def run(model_dir, defenses: str, out) -> dict:
        args = ["--data", str(image_folder), "--model", f"local-dir:{model_dir}", "--n", "8"]
        args += ["--templates", "single", "--batch-size", "4", "--attack", "pgd"]
        args += ["--steps", "2", "--eps", "4", "--threat", "transfer,bpda", "--no-progress"]
        assert evaluate([*args, "--defense", defenses, "--out", str(out)]) == 0
        return json.loads((out / "results.json").read_text())

    names = ["undefended", f"none@{other}", f"clipure_cos@{other}"]
    results = run(tiny_model_dir, ",".join(["none", *names[1:]]), tmp_path / "columns")
    assert results["settings"]["models"] == names
    assert list(results["clean"]) == names
    assert {(e["model"], e["threat"]) for e in results["robust"]} == {
        (name, threat) for name in names for threat in ("transfer", "bpda")
    }
    column = results["settings"]["columns"][f"none@{other}"]
    assert column["defense"] == "none" and column["backbone"]["spec"] == other
    # the FARE-style column is the other model itself: the same clean accuracy as a run on it
    alone = run(other_dir, "none", tmp_path / "alone")
    assert results["clean"][f"none@{other}"]["correct"] == alone["clean"]["undefended"]["correct"]
    assert "CLIPure-Cos @ " in (tmp_path / "columns" / "report.html").read_text()


def test_a_backbone_that_does_not_fit_is_refused_before_loading(
    backbone, tmp_path_factory, monkeypatch
):
    from clipure_core import columns
    from clipure_core.columns import estimated_bytes

    spec = f"none@local-dir:{_model_dir(tmp_path_factory, 'unloaded', seed=11, image_size=40)}"
    ref = parse_column(spec).backbone
    weights = estimated_bytes(ref, "fp32")  # read from the config alone
    monkeypatch.setattr(columns, "available_bytes", lambda device: weights - 1)
    playground = Playground(backbone)
    refusal = r"needs about \d+ MiB for its weights \(fp32\) but cpu has \d+ MiB free"
    with pytest.raises(InputError, match=refusal):
        playground.run(Image.open(PHOTO), LABELS, defenses=[spec])
    monkeypatch.setattr(columns, "available_bytes", lambda device: weights)
    result = playground.run(Image.open(PHOTO), LABELS, defenses=[spec])
    assert result.models == ["undefended", spec]
    loaded = load_backbone(ref.name, ref.pretrained, device="cpu")
    assert sum(p.numel() * p.element_size() for p in loaded.parameters()) == weights
    assert estimated_bytes(ref, "bf16") == weights // 2
    # once loaded it is not measured again (it takes no more memory)
    monkeypatch.setattr(columns, "available_bytes", lambda device: 0)
    again = Playground(backbone).run(Image.open(PHOTO), LABELS, defenses=[spec])
    assert again.models == result.models


def test_evaluate_refuses_bad_columns_before_any_work(tmp_path, capsys):
    from clipure_core.evaluate.cli import main as evaluate

    out = tmp_path / "out"
    release = ["--data", "cifar10", "--protocol", "release", "--out", str(out)]
    assert evaluate([*release, "--defense", "none,none@fare2-l14"]) == 2
    assert "--protocol release runs one backbone" in capsys.readouterr().err
    assert evaluate(["--data", "cifar10", "--defense", "none,none@fare9", "--out", str(out)]) == 2
    assert "unknown backbone 'fare9'" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_refuses_a_backbone_that_does_not_fit(
    tiny_model_dir, image_folder, tmp_path_factory, tmp_path, monkeypatch, capsys
):
    from clipure_core import columns
    from clipure_core.evaluate.cli import main as evaluate

    other_dir = _model_dir(tmp_path_factory, "evaluate-unloaded", seed=17)  # not loaded yet
    monkeypatch.setattr(columns, "available_bytes", lambda device: 0)
    args = ["--data", str(image_folder), "--model", f"local-dir:{tiny_model_dir}", "--n", "4"]
    args += ["--defense", f"none,none@local-dir:{other_dir}", "--out", str(tmp_path / "out")]
    assert evaluate([*args, "--templates", "single", "--no-progress"]) == 2
    assert "needs about" in capsys.readouterr().err


@pytest.fixture
def own_defense(tmp_path, monkeypatch):
    """docs/custom-defenses.md's example as my_defense.py on sys.path (unregistered after)."""
    import sys

    from clipure_core.purifiers import PURIFIERS

    from .test_custom_defense import example_code

    (tmp_path / "my_defense.py").write_text(example_code())
    monkeypatch.syspath_prepend(str(tmp_path))
    before = dict(PURIFIERS)
    yield "my_defense:NullBlend"
    PURIFIERS.clear()
    PURIFIERS.update(before)
    sys.modules.pop("my_defense", None)


def test_a_defense_of_ones_own_on_another_backbone(own_defense, tiny_model_dir, other_dir, capsys):
    column = f"{own_defense}@local-dir:{other_dir}"
    args = ["predict", PHOTO, "--labels", LABELS, "--model", f"local-dir:{tiny_model_dir}"]
    assert main([*args, "--defense", column, "--steps", "2", "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["probabilities"]["clean"]) == ["undefended", column]
    assert data["settings"]["columns"][column]["defense"] == own_defense
    assert column_title(column) == f"Null blend @ {other_dir.name}"


def test_the_memory_estimate_builds_every_open_clip_model_class():
    from clipure_core.columns import estimated_bytes, parse_backbone

    # parameters of open_clip 3.3's ViT-B-16-SigLIP (a CustomTextCLIP) and coca_ViT-B-32 (CoCa)
    # OpenAI's ViT-B/32, CLIP's published 151.3 M parameters: the README's "about 600 MB"
    assert estimated_bytes(parse_backbone("openai-b32"), "fp32") == 151_277_313 * 4
    siglip = parse_backbone("ViT-B-16-SigLIP:webli")
    assert estimated_bytes(siglip, "fp32") == 203_155_970 * 4
    coca = parse_backbone("coca_ViT-B-32:laion2b_s13b_b90k")
    assert estimated_bytes(coca, "bf16") == 253_560_065 * 2
    # a Hugging Face text tower's size is in its config on the hub: unknown, never refused
    roberta = parse_backbone("xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k")
    assert estimated_bytes(roberta, "fp32") is None


def test_evaluate_measures_a_backbone_once_however_many_columns_use_it(
    tiny_model_dir, image_folder, tmp_path_factory, tmp_path, monkeypatch
):
    from clipure_core import columns
    from clipure_core.evaluate.cli import main as evaluate

    other = f"local-dir:{_model_dir(tmp_path_factory, 'fits-once', seed=13)}"
    weights = columns.estimated_bytes(parse_column(f"none@{other}").backbone, "fp32")
    free = iter([weights])  # room for one copy; once it is loaded, none is left
    monkeypatch.setattr(columns, "available_bytes", lambda device: next(free, 0))
    args = ["--data", str(image_folder), "--model", f"local-dir:{tiny_model_dir}", "--n", "4"]
    args += ["--templates", "single", "--attack", "pgd", "--steps", "1", "--eps", "4"]
    args += ["--threat", "transfer", "--no-progress", "--out", str(tmp_path / "out")]
    assert evaluate([*args, "--defense", f"none,none@{other},clipure_cos@{other}"]) == 0


def test_audit_attacks_an_undefended_column_once_for_paper_bpda_and_full(backbone, other_dir):
    column = f"none@local-dir:{other_dir}"
    result = run_audit(
        Playground(backbone),
        Image.open(PHOTO),
        LABELS,
        steps=2,
        defenses=[column],
        conditions="clean,paper,bpda,full",
        checks="randomness",
    )
    # without a purifier the three threats differentiate the same model: one attack each,
    # as for the start-up undefended CLIP
    crafted = [(entry["attack"], entry["model"]) for entry in result.rounding]
    assert crafted == [("full", "undefended"), ("full", column)]
    cells = {c.condition: c.prediction for c in result.matrix if c.model == column}
    assert cells["paper"] == cells["bpda"] == cells["full"]
