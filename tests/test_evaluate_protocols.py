"""Evaluation protocols end to end on a tiny model: the release's staged pairs and model, the
adaptive protocol's worst case over every attack, stochastic defences judged on the worst of
k draws, attack seeds, the paired comparison and the compare command."""

from __future__ import annotations

import json
import threading
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from clipure_core import ZeroShotClassifier, load_backbone
from clipure_core.evaluate.aggregate import image_rows
from clipure_core.evaluate.cli import main
from clipure_core.evaluate.config import EvalConfig
from clipure_core.evaluate.distributed import Cluster
from clipure_core.evaluate.release import ReleaseRun, batch_records
from clipure_core.evaluate.store import PartialStore
from clipure_core.purifiers import PURIFIERS, Purifier, build_purifier
from clipure_core.threats import attacked_model

from .test_evaluate_run import read_csv

N_PROTOCOL_IMAGES = 4
# The exact two-sided McNemar p-value for every split (b, c) of up to 4 discordant images,
# by hand: min(1, 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c)).
MCNEMAR_P = {
    (0, 0): 1.0,
    (0, 1): 1.0,  # 2 * 1/2
    (0, 2): 0.5,  # 2 * 1/4
    (1, 1): 1.0,  # 2 * 3/4, capped
    (0, 3): 0.25,  # 2 * 1/8
    (1, 2): 1.0,  # 2 * 4/8
    (0, 4): 0.125,  # 2 * 1/16
    (1, 3): 0.625,  # 2 * 5/16
    (2, 2): 1.0,  # 2 * 11/16, capped
}


def mcnemar_p(only_first: int, only_second: int) -> float:
    return MCNEMAR_P[tuple(sorted((only_first, only_second)))]


class CoinFlip(Purifier):
    """A toy stochastic defence: each forward keeps or negates every embedding with
    probability 1/2. With two classes, negating swaps the prediction, so every draw is right
    with probability 1/2 whatever the image: it is robust on no image."""

    name = "coin"
    title = "Coin flip"

    def __init__(self, backbone, templates="ensemble") -> None:
        super().__init__(steps=1, step_size=1.0)

    def purify(self, z, gradient, on_step=None):
        signs = torch.randint(0, 2, (z.shape[0], 1), device=z.device) * 2 - 1
        return z * signs.to(z.dtype)


@pytest.fixture
def coin(monkeypatch):
    monkeypatch.setitem(PURIFIERS, CoinFlip.name, CoinFlip)


@pytest.fixture(scope="session")
def two_class_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-classes")
    rng = np.random.default_rng(1)
    for name in ("cat", "dog"):
        (root / name).mkdir()
        for i in range(8):
            image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def protocol_args(model_dir, data, out, *extra) -> list[str]:
    return [
        "--data",
        str(data),
        "--model",
        f"local-dir:{model_dir}",
        "--num-images",
        str(N_PROTOCOL_IMAGES),
        "--steps",
        "1",
        "--eps",
        "4",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def results_of(out) -> dict:
    return json.loads((out / "results.json").read_text())


# --- the release's staged pairing, on a scripted model ----------------------------------------

WRONG_CLEAN = {1, 4}
FOOLED = {"apgd-ce": {2, 6}, "apgd-t": {3}}
EXPECTED_CALLS = [
    ("apgd-ce", [0, 2]),
    ("apgd-ce", [3, 5]),
    ("apgd-ce", [6]),
    ("apgd-t", [0, 3]),
    ("apgd-t", [5]),
]


class ScriptedRelease:
    """Stands in for ReleaseEvaluator: images are their positions, class 0 is right; it
    records which groups each attack was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []

    def predict(self, model, pixels, tag):
        return [int(int(p) in WRONG_CLEAN) for p in pixels]

    def attack(self, model, pixels, labels, config, tag):
        group = [int(p) for p in pixels]
        self.calls.append((config.method, group))
        return {
            "predictions": [int(p in FOOLED[config.method]) for p in group],
            "linf": [0.01] * len(group),
            "l2": [0.5] * len(group),
        }


def scripted_run(out, budget=None, cluster=None):
    config = EvalConfig(data="x", out=out, protocol="release", models=("none",), max_batches=budget)
    evaluator = ScriptedRelease()

    def load(positions):
        return torch.tensor(positions), torch.zeros(len(positions), dtype=torch.long)

    run = ReleaseRun(config, evaluator, cluster or Cluster(), {"run": "scripted"}, load)
    return run, run.run(7, config.models), evaluator.calls


def test_release_stages_pair_still_robust_images_in_order_and_resume(tmp_path):
    run, stages, calls = scripted_run(tmp_path / "whole")
    # clean in pairs (0,1) (2,3) (4,5) (6); APGD-CE on the 5 right ones, paired in order;
    # APGD-T on the 3 that survived, paired again
    assert [record["positions"] for record in stages["clean"]] == [[0, 1], [2, 3], [4, 5], [6]]
    assert calls == EXPECTED_CALLS
    assert run.progress.complete
    ids = [f"image{p}" for p in range(7)]
    rows = image_rows(batch_records(stages, [4.0], ["undefended"], ids, "release"), ["a", "b"])
    assert [row["robust"] for row in rows] == [p in (0, 5) for p in range(7)]
    assert [row["clean_correct"] for row in rows] == [p not in WRONG_CLEAN for p in range(7)]
    assert [row["linf"] for row in rows] == [0.01 if p in (2, 3, 6) else 0.0 for p in range(7)]

    # resumed with the work done: nothing is attacked again
    _, again, calls = scripted_run(tmp_path / "whole")
    assert calls == [] and again == stages
    # a stored pair that is not the pair planned now (an earlier stage came out otherwise)
    # does not count: it is attacked again
    stage = PartialStore(tmp_path / "whole", {"run": "scripted"}, "eps4_apgd-t_undefended")
    stage.write({**stage.read(0), "positions": [0, 5]})
    _, again, calls = scripted_run(tmp_path / "whole")
    assert calls == [("apgd-t", [0, 3])] and outcomes(again) == outcomes(stages)
    # stopped after 5 pairs, then finished: the same stages, each pair attacked once
    first, partial, calls_before = scripted_run(tmp_path / "chunked", budget=5)
    assert partial is None and not first.progress.complete
    assert calls_before == [("apgd-ce", [0, 2])]
    _, finished, calls_after = scripted_run(tmp_path / "chunked")
    assert calls_before + calls_after == EXPECTED_CALLS
    assert outcomes(finished) == outcomes(stages)


def outcomes(stages: dict) -> dict:
    """The stages' records without their timings."""
    return {
        name: [{k: v for k, v in record.items() if k != "seconds"} for record in records]
        for name, records in stages.items()
    }


class ThreadCluster(Cluster):
    """Ranks as threads of one process, exchanging values as torch.distributed would."""

    def __init__(self, rank: int, world_size: int, slots: list, barrier: threading.Barrier):
        super().__init__(rank, world_size)
        self.slots, self.wait = slots, barrier.wait

    def all_gather(self, value):
        self.slots[self.rank] = value
        self.wait()
        values = list(self.slots)
        self.wait()
        return values


def test_release_stages_shared_between_ranks_equal_one_process(tmp_path):
    _, alone, _ = scripted_run(tmp_path / "alone")
    slots, barrier = [None, None], threading.Barrier(2)
    results = [None, None]

    def rank(index: int) -> None:  # each rank has its own disk
        cluster = ThreadCluster(index, 2, slots, barrier)
        results[index] = scripted_run(tmp_path / f"rank{index}", cluster=cluster)

    threads = [threading.Thread(target=rank, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    calls = [call for _, _, made in results for call in made]
    assert sorted(calls) == sorted(EXPECTED_CALLS)  # every pair attacked once, by one rank
    assert all(made for _, _, made in results)  # both ranks worked
    for _, stages, _ in results:
        assert outcomes(stages) == outcomes(alone)


# --- the release protocol on the tiny model ---------------------------------------------------


@pytest.fixture(scope="module")
def release_run(tiny_model_dir, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("protocols") / "release"
    args = protocol_args(tiny_model_dir, image_folder, out, "--protocol", "release")
    assert main(args) == 0
    return out


def test_release_protocol_predicts_with_the_release_model_in_pairs(
    release_run, tiny_model_dir, image_folder
):
    results = results_of(release_run)
    settings = results["settings"]
    assert settings["protocol"] == "release" and settings["threats"] == ["release"]
    assert settings["batch_size"] == 2 and settings["templates"] == "ensemble"
    assert settings["evaluation"]["eight_bit"] is False
    assert any("protocol release reproduces" in notice for notice in results["notices"])
    # emulated float16 on CPU by default (docs/release-precision.md): quick, no slowness notice
    assert settings["release_precision"] == "emulated"
    assert not any("slow on CPU" in notice for notice in results["notices"])
    stages = sorted(path.name for path in (release_run / "partial").iterdir() if path.is_dir())
    assert stages == [
        "clean",
        "eps4_apgd-ce_clipure_cos",
        "eps4_apgd-ce_undefended",
        "eps4_apgd-t_clipure_cos",
        "eps4_apgd-t_undefended",
    ]
    rows = read_csv(release_run / "per_image.csv")
    assert {row["threat"] for row in rows} == {"release"}
    # clean predictions are the release model's, called on consecutive pairs of the subset
    backbone = load_backbone(f"local-dir:{tiny_model_dir}", device="cpu")
    classifier = ZeroShotClassifier(backbone, settings["data"]["classes"], "ensemble")
    purifier = build_purifier("clipure_cos", backbone, "ensemble")
    images = {int(row["position"]): row["image"] for row in rows}
    pixels = torch.stack(
        [backbone.prepare(Image.open(image_folder / images[p])) for p in sorted(images)]
    )
    for model, defense in (("undefended", None), ("clipure_cos", purifier)):
        module = attacked_model(classifier, defense, "release")
        with torch.no_grad():
            expected = [
                module(pixels[start : start + 2]).argmax(dim=-1).tolist()
                for start in range(0, N_PROTOCOL_IMAGES, 2)
            ]
        clean = [
            int(row["clean_index"])
            for row in sorted(rows, key=lambda r: int(r["position"]))
            if row["model"] == model
        ]
        assert clean == [prediction for pair in expected for prediction in pair]
    for row in rows:
        assert float(row["linf"]) <= 4 / 255 + 1e-6
        assert row["robust"] == str(
            row["clean_correct"] == "True" and row["adversarial_index"] == row["true_index"]
        )


# --- the adaptive protocol, with a stochastic defence ----------------------------------------


@pytest.fixture(scope="module")
def adaptive_run(tiny_model_dir, image_folder, tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setitem(PURIFIERS, CoinFlip.name, CoinFlip)
    out = tmp_path_factory.mktemp("protocols") / "adaptive"
    args = protocol_args(tiny_model_dir, image_folder, out, "--protocol", "adaptive")
    args += ["--defense", "none,clipure_cos,coin", "--square-queries", "10"]
    try:
        assert main(args) == 0
    finally:
        patch.undo()
    return out


def test_adaptive_protocol_counts_an_image_robust_only_if_it_survives_every_attack(adaptive_run):
    results = results_of(adaptive_run)
    settings = results["settings"]
    assert settings["protocol"] == "adaptive" and settings["precision"] == "fp32"
    evaluation = settings["evaluation"]
    assert evaluation["stochastic"] == {"undefended": False, "clipure_cos": False, "coin": True}
    assert evaluation["eot_samples"] == {"undefended": 1, "clipure_cos": 1, "coin": 20}
    assert evaluation["draws"] == {"undefended": 1, "clipure_cos": 1, "coin": 10}
    conditions = {(entry["threat"], entry["attack"]) for entry in results["robust"]}
    assert conditions == {
        ("transfer", "autoattack"),
        ("bpda", "autoattack"),
        ("full", "autoattack"),
        ("full", "square"),
        ("full", "noise"),
    }
    rows = read_csv(adaptive_run / "per_image.csv")
    survived = defaultdict(lambda: True)
    for row in rows:
        survived[(row["model"], row["position"])] &= row["robust"] == "True"
        if row["model"] == "coin":
            assert row["draws"] == "10"
            assert row["robust"] == str(
                row["clean_correct"] == "True" and row["correct_draws"] == "10"
            )
    for entry in results["worst_case"]:
        assert entry["conditions"] == 5
        expected = sum(v for (model, _), v in survived.items() if model == entry["model"])
        assert entry["correct"] == expected
        per_condition = [e["correct"] for e in results["robust"] if e["model"] == entry["model"]]
        assert entry["correct"] <= min(per_condition)
    # the paired comparison: counts from the same images, exact McNemar p-value
    worst = [e for e in results["paired"] if e["threat"] == "worst case"]
    assert {e["defense"] for e in worst} == {"clipure_cos", "coin"}
    for entry in worst:
        mine = {p: v for (m, p), v in survived.items() if m == entry["defense"]}
        reference = {p: v for (m, p), v in survived.items() if m == "undefended"}
        assert entry["defense_only"] == sum(mine[p] and not reference[p] for p in mine)
        assert entry["undefended_only"] == sum(reference[p] and not mine[p] for p in mine)
        assert entry["n"] == N_PROTOCOL_IMAGES
        expected = mcnemar_p(entry["defense_only"], entry["undefended_only"])
        assert entry["p_value"] == pytest.approx(expected)
    assert any(e["threat"] == "clean" for e in results["paired"])
    page = (adaptive_run / "report.html").read_text()
    assert "Worst case per image" in page and "exact McNemar" in page
    # EOT is set per model under adaptive: the attack row says so, never "EOT None"
    assert "EOT per model: undefended 1, clipure_cos 1, coin 20" in page
    assert "EOT None" not in page


def test_coin_flip_defense_is_robust_on_no_image_with_k_draws(
    coin, tiny_model_dir, two_class_folder, tmp_path
):
    """One evaluation draw (the old counting) calls some images robust although every draw
    of this defence is a coin flip; the worst of 16 draws calls none robust."""
    counted = {}
    for draws in (1, 16):
        out = tmp_path / f"draws{draws}"
        args = protocol_args(tiny_model_dir, two_class_folder, out, "--num-images", "16")
        args += ["--attack", "noise", "--threat", "transfer", "--defense", "none,coin"]
        assert main([*args, "--eval-draws", str(draws)]) == 0
        results = results_of(out)
        robust = {e["model"]: e["correct"] for e in results["robust"]}
        counted[draws] = robust["coin"]
        rows = [r for r in read_csv(out / "per_image.csv") if r["model"] == "coin"]
        assert {r["draws"] for r in rows} == {str(draws)}
        if draws == 1:
            assert any("optimistic" in notice for notice in results["notices"])
    assert counted[1] >= 1  # each draw is right with probability 1/2: some pass one draw
    assert counted[16] == 0  # passing 16 draws has probability 2^-16 per image


# --- release and adaptive side by side ---------------------------------------------------------


def test_compare_shows_release_and_adaptive_side_by_side(
    release_run, adaptive_run, tmp_path, capsys
):
    page = tmp_path / "compare.html"
    assert main(["compare", str(release_run), str(adaptive_run), "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert "protocol release" in text and "protocol adaptive" in text
    assert "worst case eps=4" in text and "exact McNemar" in text
    assert "Two evaluation runs side by side" in page.read_text()
    assert main(["compare", str(release_run), str(adaptive_run), "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    assert comparison["same_images"]  # the same seed and --num-images: the same subset
    assert comparison["differing_settings"] == []  # same model, weights, templates, seed
    release, adaptive = results_of(release_run), results_of(adaptive_run)
    for line in comparison["worst_case"]:
        assert line["a"] in release["worst_case"] and line["b"] in adaptive["worst_case"]
    for entry in comparison["paired"]:
        expected = mcnemar_p(entry["robust_in_a_only"], entry["robust_in_b_only"])
        assert entry["p_value"] == pytest.approx(expected)
    assert main(["compare", str(release_run), str(tmp_path / "nowhere")]) == 2
    assert "results.json not found" in capsys.readouterr().err
