"""`python -m clipure_core.evaluate` end to end on a synthetic ImageFolder and a tiny model:
outputs and their schema, threat semantics, resume after a crash, and torchrun sharding."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from clipure_core import AttackConfig, Playground, load_backbone
from clipure_core.evaluate import batch as batch_module
from clipure_core.evaluate.batch import BatchEvaluator, Condition
from clipure_core.evaluate.cli import EXIT_INTERRUPTED, main
from clipure_core.evaluate.report import SCHEMA
from clipure_core.evaluate.store import PARTIAL_DIR
from clipure_core.purifiers import build_purifier
from clipure_core.resolution import ResizedInput

from .conftest import ASSETS, CLASSES, IMAGES_PER_CLASS

N_IMAGES = len(CLASSES) * IMAGES_PER_CLASS


def base_args(model_dir, data, out, *extra) -> list[str]:
    return [
        "--data",
        str(data),
        "--model",
        f"local-dir:{model_dir}",
        "--templates",
        "single",
        "--num-images",
        str(N_IMAGES),
        "--batch-size",
        "5",
        "--attack",
        "pgd",
        "--steps",
        "2",
        "--eps",
        "4,8",
        "--threat",
        "transfer,bpda",
        "--defense",
        "none,clipure_cos",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def numbers(out) -> dict:
    """The parts of results.json that must not depend on how the run was executed."""
    results = json.loads((out / "results.json").read_text())
    return {key: results[key] for key in ("settings", "subset", "clean", "robust")}


@pytest.fixture(scope="session")
def reference_run(tiny_model_dir, image_folder, tmp_path_factory):
    """One uninterrupted single-process run that other tests compare against."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    assert main(base_args(tiny_model_dir, image_folder, out)) == 0
    return out


def test_run_writes_the_documented_outputs(reference_run):
    results = json.loads((reference_run / "results.json").read_text())
    assert results["schema"] == SCHEMA
    assert set(results) == {
        "schema",
        "settings",
        "versions",
        "subset",
        "clean",
        "robust",
        "worst_case",
        "paired",
        "timings",
        "notices",
    }
    settings = results["settings"]
    assert settings["models"] == ["undefended", "clipure_cos"]
    assert settings["threats"] == ["transfer", "bpda"]
    assert settings["attack"]["eps"] == [4.0, 8.0] and settings["attack"]["eps_units"] == "/255"
    assert settings["data"]["classes"] == ["bird", "cat", "dog", "sports car"]
    assert settings["data"]["n"] == N_IMAGES and settings["batch_size"] == 5
    assert results["subset"] == {"n": N_IMAGES, "per_class": [3, 3, 3, 3]}
    assert set(results["versions"]) >= {"torch", "open_clip", "torchattacks", "python"}
    timings = results["timings"]
    assert set(timings["stages_s"]) == {"load", "clean", "attack", "evaluate"}
    assert timings["this_invocation"]["processes"] == 1
    assert timings["this_invocation"]["batches"] == 3
    assert timings["this_invocation"]["images"] == N_IMAGES
    assert timings["this_invocation"]["images_per_s"] > 0

    rows = read_csv(reference_run / "per_image.csv")
    assert len(rows) == N_IMAGES * 2 * 2 * 2  # images x eps x threats x models
    assert sorted({int(row["position"]) for row in rows}) == list(range(N_IMAGES))
    # accuracies in results.json are those of the rows, with Wilson intervals
    for model, clean in results["clean"].items():
        picked = [r for r in rows if r["model"] == model and r["threat"] == "bpda"]
        picked = [r for r in picked if r["eps"] == "4.0"]
        assert clean["correct"] == sum(r["clean_correct"] == "True" for r in picked)
        assert clean["n"] == N_IMAGES and clean["ci95"][0] <= clean["accuracy"] <= clean["ci95"][1]
    assert len(results["robust"]) == 8
    for entry in results["robust"]:
        group = [
            r
            for r in rows
            if (float(r["eps"]), r["threat"], r["model"])
            == (entry["eps"], entry["threat"], entry["model"])
        ]
        assert entry["correct"] == sum(r["robust"] == "True" for r in group)
        assert entry["n"] == N_IMAGES
        assert entry["max_linf"] <= entry["eps"] / 255 + 1e-12  # 8-bit, inside the eps-ball
    for row in rows:
        if row["robust"] == "True":
            assert row["clean_correct"] == "True" and row["adversarial_index"] == row["true_index"]
        assert row["attack_success"] == str(row["clean_correct"] == "True" != row["robust"])

    page = (reference_run / "report.html").read_text()
    assert page.count('class="plotly-graph-div"') == 3  # bars for eps 4 and 8, accuracy vs eps
    assert "Robust accuracy vs eps" in page and "CLIPure-Cos" in page


def test_threat_semantics_and_shared_images(reference_run):
    rows = read_csv(reference_run / "per_image.csv")
    by_key = {(r["position"], r["eps"], r["threat"], r["model"]): r for r in rows}
    for (position, eps, threat, model), row in by_key.items():
        undefended = by_key[(position, eps, threat, "undefended")]
        if threat == "transfer":  # every model sees the undefended model's image
            assert (row["linf"], row["l2"]) == (undefended["linf"], undefended["l2"])
        if model == "undefended":  # its white-box attack does not depend on the threat
            transfer = by_key[(position, eps, "transfer", "undefended")]
            assert row["adversarial_index"] == transfer["adversarial_index"]
            assert row["l2"] == transfer["l2"]


def test_batch_results_equal_the_one_image_playground(tiny_model_dir, image_folder, tmp_path):
    """With batch size 1, batch i is Playground.run on image i with seed + i."""
    out = tmp_path / "single"
    args = base_args(tiny_model_dir, image_folder, out, "--num-images", "3", "--batch-size", "1")
    assert main([*args, "--seed", "5"]) == 0
    rows = read_csv(out / "per_image.csv")
    backbone = load_backbone(f"local-dir:{tiny_model_dir}", device="cpu")
    playground = Playground(backbone, templates="single")
    labels = json.loads((out / "results.json").read_text())["settings"]["data"]["classes"]
    for position in range(3):
        mine = [row for row in rows if row["position"] == str(position)]
        image = Image.open(image_folder / mine[0]["image"])
        for eps in (4, 8):
            for threat in ("transfer", "bpda"):
                result = playground.run(
                    image,
                    labels,
                    AttackConfig("pgd", "linf", eps / 255, 2),
                    threat=threat,
                    defenses=["clipure_cos"],
                    seed=5 + position,
                    true_label=mine[0]["true_label"],
                )
                expected = result.predictions()
                for row in mine:
                    if row["threat"] == threat and float(row["eps"]) == eps:
                        assert row["clean_label"] == expected["clean"][row["model"]]
                        assert row["adversarial_label"] == expected["adversarial"][row["model"]]


def test_stopped_run_resumes_to_the_same_results(
    reference_run, tiny_model_dir, image_folder, tmp_path, capsys
):
    out = tmp_path / "chunked"
    args = base_args(tiny_model_dir, image_folder, out)
    assert main([*args, "--max-batches", "1"]) == 0
    assert "1 of 3 batches finished" in capsys.readouterr().out
    assert sorted(p.name for p in (out / PARTIAL_DIR).glob("batch_*.json")) == ["batch_00000.json"]
    assert not (out / "results.json").exists()
    assert main(args) == 0
    assert numbers(out) == numbers(reference_run)
    assert (out / "per_image.csv").read_text() == (reference_run / "per_image.csv").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["timings"]["this_invocation"]["batches"] == 2  # only the missing ones


def test_crash_mid_run_loses_only_the_batch_in_flight(
    reference_run, tiny_model_dir, image_folder, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "crashed"
    args = base_args(tiny_model_dir, image_folder, out)
    original = BatchEvaluator.__call__
    calls = []

    def interrupted(self, pixels, labels, batch_index):
        calls.append(batch_index)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second batch runs
        return original(self, pixels, labels, batch_index)

    monkeypatch.setattr(BatchEvaluator, "__call__", interrupted)
    assert main(args) == EXIT_INTERRUPTED
    assert "run the same command again to resume" in capsys.readouterr().err
    assert [p.name for p in (out / PARTIAL_DIR).glob("batch_*.json")] == ["batch_00000.json"]
    monkeypatch.setattr(BatchEvaluator, "__call__", original)
    assert main(args) == 0
    assert (out / "per_image.csv").read_text() == (reference_run / "per_image.csv").read_text()
    assert numbers(out) == numbers(reference_run)
    # lost finished batches (a crash between writes) are recomputed identically too
    (out / PARTIAL_DIR / "batch_00001.json").unlink()
    (out / "results.json").unlink()
    assert main(args) == 0
    assert numbers(out) == numbers(reference_run)


def test_rerun_with_other_settings_is_refused(reference_run, tiny_model_dir, image_folder, capsys):
    args = base_args(tiny_model_dir, image_folder, reference_run, "--eps", "2")
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "attack.eps" in error and "--out" in error


def test_autoattack_run_with_progress_bar(tiny_model_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "aa"
    args = base_args(tiny_model_dir, image_folder, out, "--attack", "autoattack", "--eps", "4")
    args += ["--threat", "paper", "--defense", "clipure_cos", "--batch-size", "12"]
    args.remove("--no-progress")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "img/s" in captured.err and "12/12" in captured.err  # the progress bar
    # the notice says what 'paper' measures: attenuated, not masked; float16 masked the release
    assert "threat 'paper'" in captured.out and "points the right way" in captured.out
    assert "masks" not in captured.out and "fp16" in captured.out
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["attack"]["method"] == "autoattack"
    assert results["settings"]["models"] == ["clipure_cos"]
    assert [entry["model"] for entry in results["robust"]] == ["clipure_cos"]
    assert results["robust"][0]["max_linf"] <= 4 / 255 + 1e-12


def test_bad_requests_exit_with_a_message(tiny_model_dir, image_folder, tmp_path, capsys):
    args = base_args(tiny_model_dir, image_folder, tmp_path / "x")
    assert main([*args, "--defense", "none,nonsense"]) == 2
    assert "unknown defence 'nonsense'" in capsys.readouterr().err
    assert main([*args, "--data", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main([*args, "--threat", "paper,sideways"]) == 2
    assert "threat model 'sideways'" in capsys.readouterr().err
    assert main([*args, "--attack", "apgd-t", "--eps", "4"]) == 0  # 4 classes suffice


def test_batch_evaluator_crafts_each_image_once(backbone, monkeypatch):
    """Encoder forwards are shared: one clean pass, one undefended attack per eps for every
    threat, one attack per (eps, adaptive threat, defence)."""
    from clipure_core import ZeroShotClassifier

    classifier = ZeroShotClassifier(backbone, ["cat", "dog", "car"], "single")
    purifiers = {"clipure_cos": build_purifier("clipure_cos", backbone, "single")}
    crafted = []

    def fake_attack(model, pixels, labels, config, seed, num_classes=None):
        model = model.module if isinstance(model, ResizedInput) else model  # any-size input
        crafted.append((type(model).__name__, getattr(model, "gradient", None), config.eps))
        return (pixels + config.eps).clamp(0, 1)

    monkeypatch.setattr(batch_module, "craft_attack", fake_attack)
    conditions = [Condition(e, t) for e in (4.0, 8.0) for t in ("transfer", "paper", "bpda")]
    attacks = {eps: AttackConfig("pgd", "linf", eps / 255, 2) for eps in (4.0, 8.0)}
    evaluator = BatchEvaluator(
        classifier, purifiers, ["undefended", "clipure_cos"], conditions, attacks, seed=0
    )
    encodes = []
    original = evaluator._encode
    monkeypatch.setattr(evaluator, "_encode", lambda *a: encodes.append(1) or original(*a))
    pixels = torch.rand(2, 3, 32, 32)
    state = torch.random.get_rng_state()
    result = evaluator(pixels, torch.tensor([0, 1]), batch_index=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert crafted == [
        ("ZeroShotClassifier", None, 4 / 255),
        ("DefendedClassifier", "paper", 4 / 255),
        ("DefendedClassifier", "bpda", 4 / 255),
        ("ZeroShotClassifier", None, 8 / 255),
        ("DefendedClassifier", "paper", 8 / 255),
        ("DefendedClassifier", "bpda", 8 / 255),
    ]
    assert len(encodes) == 1 + len(crafted)
    assert [(c["eps"], c["threat"]) for c in result["adversarial"]] == [
        (c.eps, c.threat) for c in conditions
    ]
    assert result["adversarial"][0]["linf"]["clipure_cos"] == pytest.approx([4 / 255] * 2)


def test_torchrun_two_processes_equal_one(reference_run, tiny_model_dir, image_folder, tmp_path):
    """Bitwise equal on CPU when each process uses as many threads as the reference run did:
    float reductions depend on the thread count, and torchrun would otherwise give each worker
    one thread (OMP_NUM_THREADS=1) against this process's torch.get_num_threads()."""
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "clipure_core.evaluate"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "CLIPURE_CACHE_DIR": os.environ["CLIPURE_CACHE_DIR"],
        "OMP_NUM_THREADS": str(torch.get_num_threads()),  # as in the reference run
    }
    done = subprocess.run(
        [*command, *base_args(tiny_model_dir, image_folder, out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ASSETS.parent,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "per_image.csv").read_text() == (reference_run / "per_image.csv").read_text()
    assert numbers(out) == numbers(reference_run)
    results = json.loads((out / "results.json").read_text())
    assert results["timings"]["this_invocation"]["processes"] == 2
    assert results["timings"]["this_invocation"]["batches"] == 3
    assert done.stdout.count("12 images, pgd") == 1  # only rank 0 reports


@pytest.fixture(scope="module")
def tiny_prior(tiny_model_dir, image_folder, tmp_path_factory):
    """A (barely trained) CLIPure-Diff prior for the tiny model."""
    from clipure_core.train_prior import main as train_prior_main

    out = tmp_path_factory.mktemp("priors") / "tiny.safetensors"
    args = ["--model", f"local-dir:{tiny_model_dir}", "--images", str(image_folder)]
    args += ["--out", str(out), "--epochs", "2", "--batch-size", "4", "--depth", "1"]
    args += ["--heads", "2", "--dim-head", "16", "--device", "cpu"]
    code = train_prior_main(args)
    assert code == 0
    return out


def test_stochastic_defense_resumes_to_the_same_results(
    tiny_model_dir, image_folder, tiny_prior, tmp_path
):
    """CLIPure-Diff draws noise; seeded per batch, an interrupted run still ends identical."""
    extra = ["--defense", "none,clipure_diff", "--prior", str(tiny_prior), "--diff-steps", "2"]
    extra += ["--eps", "4", "--eot", "2"]
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    assert main(base_args(tiny_model_dir, image_folder, whole, *extra)) == 0
    assert main(base_args(tiny_model_dir, image_folder, chunked, *extra, "--max-batches", "2")) == 0
    assert main(base_args(tiny_model_dir, image_folder, chunked, *extra)) == 0
    assert (whole / "per_image.csv").read_text() == (chunked / "per_image.csv").read_text()
    assert numbers(whole) == numbers(chunked)
    defenses = numbers(whole)["settings"]["defenses"]
    assert defenses["clipure_diff"]["prior"] == str(tiny_prior)
    assert defenses["clipure_diff"]["steps"] == 2


def test_several_attack_seeds_report_their_spread(
    reference_run, tiny_model_dir, image_folder, tmp_path
):
    out = tmp_path / "seeds"
    assert main(base_args(tiny_model_dir, image_folder, out, "--attack-seeds", "2")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["evaluation"]["attack_seeds"] == 2
    rows = read_csv(out / "per_image.csv")
    assert len(rows) == 2 * len(read_csv(reference_run / "per_image.csv"))
    # seed 0 is the single-seed run: the same decisions, image by image
    decisions = ("position", "eps", "threat", "model", "clean_index", "adversarial_index", "robust")
    first = [{k: r[k] for k in decisions} for r in rows if r["attack_seed"] == "0"]
    reference = [{k: r[k] for k in decisions} for r in read_csv(reference_run / "per_image.csv")]
    assert first == reference
    for entry in results["robust"]:
        spread = entry["seeds"]
        group = [
            r
            for r in rows
            if (float(r["eps"]), r["threat"], r["model"])
            == (entry["eps"], entry["threat"], entry["model"])
        ]
        for seed, accuracy in enumerate(spread["accuracy"]):
            picked = [r["robust"] == "True" for r in group if r["attack_seed"] == str(seed)]
            assert accuracy == pytest.approx(sum(picked) / len(picked))
        assert spread["accuracy"][0] == pytest.approx(entry["accuracy"])
        assert spread["min"] <= spread["mean"] <= spread["max"]
        assert entry["worst_over_seeds"]["accuracy"] <= spread["min"] + 1e-12
    for entry in results["worst_case"]:
        assert entry["conditions"] == 4  # 2 threats x 2 seeds
