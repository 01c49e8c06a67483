"""8-bit rounding after an attack: images that rounding made non-adversarial again are
counted and re-attacked on the 8-bit lattice (clipure_core/lattice.py), and the runs record
how many. Toy models on pixels place the decision boundary exactly, so every expected
outcome below is written down by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipure_core import AttackConfig, Playground, ZeroShotClassifier, pipeline, served
from clipure_core.audit import run_audit
from clipure_core.audit import runner as audit_runner
from clipure_core.audit.dataset import audit_dataset
from clipure_core.evaluate import batch as batch_module
from clipure_core.evaluate import release
from clipure_core.evaluate.aggregate import image_rows, robust_accuracy
from clipure_core.evaluate.cli import main
from clipure_core.evaluate.data import load_dataset
from clipure_core.lattice import LATTICE_STEPS, round_onto_lattice

from .conftest import CLASSES, IMAGES_PER_CLASS

GREY = 128
N_IMAGES = len(CLASSES) * IMAGES_PER_CLASS


class Shift(nn.Module):
    """Logits over `classes` classes: class 1 scores s - `threshold`, s the sum of the pixels'
    shifts from grey in 8-bit levels over `pixels` (with `peak`: 1 - |s - peak|, highest at
    s = peak); class 0 scores 0, any others `others`. Counts its forwards and backwards."""

    def __init__(
        self,
        threshold: float = 0.0,
        pixels: slice = slice(None),
        classes: int = 2,
        others: float = -5.0,
        peak: float | None = None,
    ):
        super().__init__()
        self.threshold, self.pixels, self.classes, self.others = threshold, pixels, classes, others
        self.peak = peak
        self.forwards = self.backwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        shift = (x * 255 - GREY).flatten(1)[:, self.pixels].sum(dim=1)
        if shift.requires_grad:
            shift.register_hook(self._count_backward)
        logits = torch.full((x.shape[0], self.classes), self.others)
        logits[:, 0] = 0.0
        score = shift - self.threshold if self.peak is None else 1 - (shift - self.peak).abs()
        return logits.index_put((torch.arange(x.shape[0]), torch.tensor(1)), score)

    def _count_backward(self, gradient: torch.Tensor) -> None:
        self.backwards += 1


def grey(batch: int = 1) -> torch.Tensor:
    return torch.full((batch, 3, 2, 2), GREY / 255)


def levels(pixels: torch.Tensor) -> torch.Tensor:
    return pixels * 255


def test_linf_rounding_undoes_the_attack_and_one_lattice_step_repairs_it():
    # 12 pixels at +3.4 levels: 40.8 > 40 fools; rounded to +3 levels: 36 < 40 does not;
    # one sign step of one level: +4 levels, 48 > 40, inside 4/255.
    model, clean = Shift(40.0), grey()
    raw = clean + 3.4 / 255
    result = round_onto_lattice(model, clean, raw, torch.tensor([0]), "linf", 4 / 255)
    assert result.fooled_before == [True] and result.fooled_after == [False]
    assert result.undone == [True] and result.repaired == [True]
    assert torch.equal(result.adversarial, torch.full((1, 3, 2, 2), 132.0) / 255)
    assert result.image(0) == {
        "fooled_before_rounding": True,
        "fooled_after_rounding": False,
        "undone_by_rounding": True,
        "repaired": True,
    }
    # two judgements, one differentiated forward at the rounded image, one judging the step
    assert (model.forwards, model.backwards) == (4, 1)


def test_linf_lattice_cannot_reach_a_boundary_outside_the_lattice_ball():
    # eps 4.5/255 allows 4 whole levels: the float image at +4.5 levels fools (54 > 50), no
    # 8-bit image inside the ball does (at most 48).
    model, clean = Shift(50.0), grey()
    raw = clean + 4.5 / 255
    result = round_onto_lattice(model, clean, raw, torch.tensor([0]), "linf", 4.5 / 255)
    assert result.undone == [True] and result.repaired == [False]
    assert torch.equal(result.adversarial, torch.full((1, 3, 2, 2), 132.0) / 255)
    assert (model.forwards, model.backwards) == (2 + LATTICE_STEPS + 1, LATTICE_STEPS)


def test_unrepaired_image_keeps_its_highest_loss_lattice_point():
    # class 1 peaks at s = 40.8 (the float image, +3.4 levels): the rounding (+3, s = 36)
    # scores -3.8, the gradient points up, but the step overshoots to +4 (s = 48, -6.2) and
    # the ball stops it there: the rounded image had the higher loss and is kept.
    model, clean = Shift(peak=40.8), grey()
    raw = clean + 3.4 / 255
    result = round_onto_lattice(model, clean, raw, torch.tensor([0]), "linf", 4 / 255)
    assert result.undone == [True] and result.repaired == [False]
    assert torch.equal(result.adversarial, torch.full((1, 3, 2, 2), 131.0) / 255)


def test_nothing_undone_costs_two_forwards_and_no_gradient():
    model, clean = Shift(40.0), grey()
    raw = clean + 3.6 / 255  # rounds to +4 levels: 48 > 40 still fools
    result = round_onto_lattice(model, clean, raw, torch.tensor([0]), "linf", 4 / 255)
    assert result.fooled_before == result.fooled_after == [True]
    assert result.undone == [False] and result.repaired == [False]
    assert (model.forwards, model.backwards) == (2, 0)


class CoinFlip(nn.Module):
    """A random 2-class model: the true class 0 and class 1 win by a fair coin each forward."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.randn(pixels.shape[0], 2, device=pixels.device)


def test_images_rounding_leaves_unchanged_are_never_undone():
    # A review's case: the float image is already on the 8-bit grid, so rounding changes
    # nothing; judged on two separate draws, about a quarter of the images of a random model
    # would read "fooled before, not after" (measured 42 of 200 before this rule).
    clean = grey(200)
    raw = torch.full_like(clean, (GREY + 2) / 255)  # on the grid, as rounding writes it
    torch.manual_seed(0)
    result = round_onto_lattice(CoinFlip(), clean, raw, torch.zeros(200, dtype=torch.long),
                                "linf", 4 / 255)  # fmt: skip
    assert sum(result.undone) == 0 and not any(result.repaired)
    assert result.fooled_before == result.fooled_after
    assert torch.equal(result.adversarial, raw)


def test_only_undone_images_move():
    # image 0: +3.4 levels (undone, then repaired); image 1: +1.2 levels (never fooled)
    model, clean = Shift(40.0), grey(2)
    raw = clean + torch.tensor([3.4, 1.2]).view(2, 1, 1, 1) / 255
    result = round_onto_lattice(model, clean, raw, torch.tensor([0, 0]), "linf", 4 / 255)
    assert result.fooled_before == [True, False] and result.fooled_after == [False, False]
    assert result.undone == [True, False] and result.repaired == [True, False]
    assert torch.equal(levels(result.adversarial[0]), torch.full((3, 2, 2), 132.0))
    assert torch.equal(levels(result.adversarial[1]), torch.full((3, 2, 2), 129.0))


def test_l2_rounding_undone_and_repaired_on_the_lattice():
    # only pixel 0 counts: +3.4 levels fools (> 3.2), rounded +3 does not; a normalised step
    # moves that pixel by one level: +4 levels, L2 norm exactly 4/255 = eps.
    model, clean = Shift(3.2, pixels=slice(0, 1)), grey()
    raw = clean.clone()
    raw.view(-1)[0] += 3.4 / 255
    result = round_onto_lattice(model, clean, raw, torch.tensor([0]), "l2", 4 / 255)
    assert result.undone == [True] and result.repaired == [True]
    expected = torch.full((1, 3, 2, 2), float(GREY))
    expected.view(-1)[0] = 132.0
    assert torch.equal(levels(result.adversarial), expected)


def test_l2_lattice_cannot_leave_the_ball():
    # eps 4.4/255: +4.4 levels fool (> 4.2); +4 (the rounding) does not, +5 is outside the ball
    model, clean = Shift(4.2, pixels=slice(0, 1)), grey()
    raw = clean.clone()
    raw.view(-1)[0] += 4.4 / 255
    result = round_onto_lattice(model, clean, raw, torch.tensor([0]), "l2", 4.4 / 255)
    assert result.undone == [True] and result.repaired == [False]
    assert float(levels(result.adversarial - clean).norm()) == pytest.approx(4.0, rel=1e-5)


def test_targeted_attack_is_judged_by_its_target():
    # three classes, true class 2 (never predicted): untargeted, every image fools it; with
    # target 1 the float image reaches it, its rounding falls back to class 0, one step repairs
    model, clean = Shift(40.0, classes=3), grey()
    raw = clean + 3.4 / 255
    labels = torch.tensor([2])
    untargeted = round_onto_lattice(model, clean, raw, labels, "linf", 4 / 255)
    assert untargeted.fooled_before == untargeted.fooled_after == [True]
    assert untargeted.undone == [False]
    targeted = round_onto_lattice(model, clean, raw, labels, "linf", 4 / 255, targeted_label=1)
    assert targeted.undone == [True] and targeted.repaired == [True]
    assert torch.equal(targeted.adversarial, torch.full((1, 3, 2, 2), 132.0) / 255)


def test_judging_without_repair_keeps_the_rounding():
    model, clean = Shift(40.0), grey()
    raw = clean + 3.4 / 255
    result = round_onto_lattice(model, clean, raw, torch.tensor([0]), "linf", 4 / 255, repair=False)
    assert result.undone == [True] and result.repaired == [False]
    assert result.image(0)["repaired"] is None
    assert torch.equal(result.adversarial, torch.full((1, 3, 2, 2), 131.0) / 255)
    assert model.backwards == 0


class MeanShift(nn.Module):
    """Four classes: class 0 below a mean shift of 3.2 levels from the clean image, class 1
    above it (the evaluation's attacked model, replaced)."""

    def __init__(self, clean: dict) -> None:
        super().__init__()
        self.clean = clean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reference = self.clean.get(x.shape, x)  # before an attack: the clean image itself
        shift = ((x - reference) * 255).flatten(1).mean(dim=1)
        return torch.stack(
            [3.2 - shift, shift - 3.2, torch.full_like(shift, -9), torch.full_like(shift, -9)], 1
        )


def test_evaluate_records_undone_and_repaired(tiny_model_dir, image_folder, tmp_path, monkeypatch):
    """The attacked model is a toy judging the mean shift from the clean image, the 'attack'
    adds 3.4 levels: the float image is class 1, its rounding (+3 levels, less where pixels
    hit 255) class 0, one lattice step (+4) class 1 again. Images of class 0 ('bird') are
    undone and repaired (3 of 12); cats (1) were never fooled; dogs and cars (2, 3) stay fooled."""
    clean: dict = {}
    monkeypatch.setattr(batch_module, "craft_attack", fake_attack(clean))
    monkeypatch.setattr(batch_module, "attacked_model", lambda *args, **kwargs: MeanShift(clean))
    out = tmp_path / "run"
    args = [
        "--data", str(image_folder), "--model", f"local-dir:{tiny_model_dir}",
        "--templates", "single", "--num-images", str(N_IMAGES), "--batch-size", "4",
        "--attack", "pgd", "--steps", "1", "--eps", "4", "--threat", "transfer",
        "--defense", "none,clipure_cos", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    robust = {entry["model"]: entry for entry in results["robust"]}
    assert (robust["undefended"]["undone_by_rounding"], robust["undefended"]["repaired"]) == (3, 3)
    # under transfer the defence was not attacked: nothing of its own to count
    assert robust["clipure_cos"]["undone_by_rounding"] is None
    assert robust["clipure_cos"]["repaired"] is None
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    undefended = [row for row in rows if row["model"] == "undefended"]
    undone = {row["true_label"] for row in undefended if row["undone_by_rounding"] == "True"}
    assert undone == {"bird"}
    assert all(row["repaired"] == row["undone_by_rounding"] for row in undefended)
    for row in undefended:  # a repaired image moved one more level
        expected = 4 if row["true_label"] == "bird" else 3
        assert float(row["linf"]) == pytest.approx(expected / 255, rel=1e-5)
    defended = [row for row in rows if row["model"] == "clipure_cos"]
    assert {(row["undone_by_rounding"], row["repaired"]) for row in defended} == {("", "")}


def fake_attack(clean: dict):
    """An 'attack' adding 3.4 levels to every pixel; remembers the clean pixels by shape."""

    def attack(model, pixels, labels, config, seed, num_classes=None, on_query=None, **kwargs):
        clean[pixels.shape] = pixels
        return (pixels + 3.4 / 255).clamp(0, 1)

    return attack


UNDONE_AND_REPAIRED = {
    "fooled_before_rounding": True,
    "fooled_after_rounding": False,
    "undone_by_rounding": True,
    "repaired": True,
}
LABELS4 = ["cat", "dog", "car", "bird"]


@pytest.fixture(scope="module")
def mid_grey_photo():
    """A random photo with pixels in [20, 230]: +3.4 levels never saturate."""
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(20, 231, (40, 40, 3), dtype=np.uint8))


def test_playground_reports_rounding_per_attacked_model(backbone, mid_grey_photo, monkeypatch):
    clean = {}
    monkeypatch.setattr(pipeline, "craft_attack", fake_attack(clean))
    monkeypatch.setattr(served, "attacked_model", lambda *args, **kwargs: MeanShift(clean))
    playground = Playground(backbone, templates="single")
    result = playground.run(
        mid_grey_photo, LABELS4, threat="bpda", defenses=["clipure_cos"], true_label="cat"
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["rounding"] == {
        "undefended": UNDONE_AND_REPAIRED,
        "clipure_cos": UNDONE_AND_REPAIRED,
    }
    # the repaired 8-bit image (the one evaluated and downloaded) moved 4 levels, not 3
    assert data["perturbation"]["linf"] == pytest.approx(4 / 255, rel=1e-5)


def test_audit_records_rounding_per_crafted_image(backbone, mid_grey_photo, monkeypatch):
    clean = {}
    monkeypatch.setattr(audit_runner, "craft_attack", fake_attack(clean))
    monkeypatch.setattr(served, "attacked_model", lambda *args, **kwargs: MeanShift(clean))
    playground = Playground(backbone, templates="single")
    result = run_audit(
        playground, mid_grey_photo, LABELS4, true_label="cat", steps=1,
        conditions="noise,transfer,full", checks="noise_control",
    )  # fmt: skip
    rounding = result.to_dict()["rounding"]
    assert rounding == [
        # noise is gradient-free: counted, never re-attacked with a gradient
        {"attack": "noise", "model": "undefended", **UNDONE_AND_REPAIRED, "repaired": None},
        {"attack": "full", "model": "undefended", **UNDONE_AND_REPAIRED},
        {"attack": "full", "model": "clipure_cos", **UNDONE_AND_REPAIRED},
    ]


def test_dataset_audit_counts_rounding_per_attack(backbone, image_folder, monkeypatch):
    """As in the evaluate test: of 12 images, the 3 birds (class 0) are undone; the gradient
    attack's are repaired, noise's are not re-attacked."""
    clean = {}
    monkeypatch.setattr(audit_runner, "craft_attack", fake_attack(clean))
    monkeypatch.setattr(served, "attacked_model", lambda *args, **kwargs: MeanShift(clean))
    report = audit_dataset(
        Playground(backbone, templates="single"), load_dataset(str(image_folder)),
        defenses=(), steps=1, conditions="noise,full", checks="noise_control",
    ).to_dict()  # fmt: skip
    assert report["rounding"] == [
        {"attack": "noise", "model": "undefended", "undone_by_rounding": 3, "repaired": None,
         "n": N_IMAGES},
        {"attack": "full", "model": "undefended", "undone_by_rounding": 3, "repaired": 3,
         "n": N_IMAGES},
    ]  # fmt: skip


def test_release_protocol_records_rounding_without_applying_it(
    backbone, mid_grey_photo, monkeypatch
):
    """The release keeps its float images: the float image fools the model (prediction 1) and
    its perturbation is 3.4 levels; that rounding would undo it is recorded, and nothing is
    re-attacked."""
    clean = {}
    monkeypatch.setattr(release, "craft_attack", fake_attack(clean))
    monkeypatch.setattr(release, "attacked_model", lambda *args, **kwargs: MeanShift(clean))
    evaluator = release.ReleaseEvaluator(
        ZeroShotClassifier(backbone, LABELS4, "single"), {}, "release", seed=0
    )
    pixels = backbone.prepare(mid_grey_photo).unsqueeze(0).repeat(2, 1, 1, 1)
    config = AttackConfig("apgd-ce", "linf", 4 / 255, 2)
    result = evaluator.attack("undefended", pixels, torch.tensor([0, 1]), config, "pair 0")
    assert result["predictions"] == [1, 1]  # image 1 (class 1) is right, never fooled
    assert result["undone_by_rounding"] == [True, False]
    assert result["linf"] == pytest.approx([3.4 / 255] * 2, rel=1e-5)
    stages = {
        "clean": [
            {"batch": 0, "positions": [0, 1], "targets": [0, 1],
             "predictions": {"undefended": [0, 1]}, "seconds": {"evaluate": 0.0}},
        ],
        "eps4_apgd-ce_undefended": [
            {"batch": 0, "positions": [0, 1], **result, "seconds": {"attack": 0.0}},
        ],
        # APGD-T fools image 1; a record stored without the judgement (an older run) reads None
        "eps4_apgd-t_undefended": [
            {"batch": 0, "positions": [1], "predictions": [0], "linf": [0.01], "l2": [0.1],
             "seconds": {"attack": 0.0}},
        ],
    }  # fmt: skip
    records = release.batch_records(stages, [4.0], ["undefended"], ["a", "b"], "release")
    rows = image_rows(records, LABELS4, "autoattack")
    assert [(row["undone_by_rounding"], row["repaired"]) for row in rows] == [
        (True, None),
        (None, None),
    ]
    (entry,) = robust_accuracy(rows)
    assert (entry["correct"], entry["undone_by_rounding"], entry["repaired"]) == (0, 1, None)
    # an image no stage fooled is not undone
    stages["eps4_apgd-t_undefended"][0]["predictions"] = [1]
    records = release.batch_records(stages, [4.0], ["undefended"], ["a", "b"], "release")
    assert [row["undone_by_rounding"] for row in image_rows(records, LABELS4)] == [True, False]
