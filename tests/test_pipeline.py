"""One request end to end: Playground.run and the result's JSON."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from clipure_core import AttackConfig, InputError, Playground, ZeroShotClassifier
from clipure_core.pixels import pil_to_pixels

from .conftest import LABELS

ATTACK = AttackConfig("pgd", "linf", 8 / 255, 5)


@pytest.fixture(scope="module")
def playground(backbone):
    return Playground(backbone, templates="single")


def without_timings(result) -> dict:
    data = result.to_dict()
    data.pop("timings_ms")
    return data


def test_transfer_request_reports_every_model(playground, cat_photo):
    result = playground.run(cat_photo, ", ".join(LABELS), ATTACK, "transfer", ["clipure_cos"])
    data = json.loads(json.dumps(result.to_dict()))
    assert data["labels"] == LABELS
    for condition in ("clean", "adversarial"):
        assert set(data["probabilities"][condition]) == {"undefended", "clipure_cos"}
        for probs in data["probabilities"][condition].values():
            assert len(probs) == len(LABELS) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert set(result.adversarial_images) == {"undefended"}
    assert data["image_for"] == {"undefended": "undefended", "clipure_cos": "undefended"}
    assert 0 < data["perturbation"]["linf"] <= 8 / 255 + 1e-6
    assert data["true_label"] == data["predictions"]["clean"]["undefended"]
    trajectory = data["diagnostics"]["clipure_cos"]["trajectory"]
    assert [row["step"] for row in trajectory] == list(range(11))
    assert data["diagnostics"]["clipure_cos"]["clean"]["trajectory"][0]["cos_to_start"] == 1.0
    for run in (data["diagnostics"]["clipure_cos"], data["diagnostics"]["clipure_cos"]["clean"]):
        assert run["max_angle_deg"] >= run["angle_moved_deg"] - 1e-6
    assert set(data["timings_ms"]) == {"attack", "purify", "encode", "total"}
    assert data["settings"]["seed"] == 0 and data["settings"]["attack"]["eps_255"] == 8
    assert data["settings"]["defenses"]["clipure_cos"] == {
        "steps": 10,
        "step_size": 30.0,
        "batch_coupled": False,
    }
    assert result.verdicts()[0].startswith("undefended: ")


def test_reported_probabilities_are_those_of_the_downloaded_png(playground, backbone, cat_photo):
    result = playground.run(cat_photo, LABELS, ATTACK, "bpda", ["clipure_cos"], seed=3)
    buffer = io.BytesIO()
    result.adversarial_images["clipure_cos"].save(buffer, format="PNG")
    reloaded = pil_to_pixels(Image.open(buffer)).unsqueeze(0)
    classifier = ZeroShotClassifier(backbone, LABELS, "single")
    purifier = playground.purifier("clipure_cos")
    with torch.no_grad():
        z = backbone.encode_image(reloaded)
        probs = classifier.logits_from_embeddings(purifier(z)).softmax(dim=-1)[0]
    reported = result.probabilities["adversarial"]["clipure_cos"]
    assert torch.allclose(probs, torch.tensor(reported), atol=1e-6)
    clean = pil_to_pixels(result.clean_image)
    assert torch.equal(clean, backbone.prepare(cat_photo))


def test_adaptive_threats_attack_each_model_on_its_own(playground, cat_photo):
    result = playground.run(cat_photo, LABELS, ATTACK, "paper", ["clipure_cos"])
    assert set(result.adversarial_images) == {"undefended", "clipure_cos"}
    assert result.image_for == {"undefended": "undefended", "clipure_cos": "clipure_cos"}
    assert result.adversarial_image is result.adversarial_images["clipure_cos"]
    transfer = playground.run(cat_photo, LABELS, ATTACK, "transfer", ["clipure_cos"])
    assert result.probabilities["adversarial"]["undefended"] == pytest.approx(
        transfer.probabilities["adversarial"]["undefended"]
    )


def test_same_seed_same_result(playground, cat_photo):
    first = playground.run(cat_photo, LABELS, ATTACK, "full", ["clipure_cos"], seed=11)
    second = playground.run(cat_photo, LABELS, ATTACK, "full", ["clipure_cos"], seed=11)
    assert without_timings(first) == without_timings(second)
    assert first.adversarial_image.tobytes() == second.adversarial_image.tobytes()


def test_targeted_request_and_explicit_true_label(playground, cat_photo):
    attack = AttackConfig("pgd", "linf", 32 / 255, 40)
    result = playground.run(
        cat_photo, LABELS, attack, defenses=[], true_label="cat", target_label="car"
    )
    assert result.true_label == "cat"
    assert result.settings["attack"]["targeted_label"] == LABELS.index("car")
    assert result.predictions()["adversarial"]["undefended"] == "car"
    assert result.models == ["undefended"]


def test_cos_settings_change_the_purification(playground, cat_photo):
    settings = {"clipure_cos": {"steps": 3, "step_size": 0.5}}
    result = playground.run(cat_photo, LABELS, ATTACK, defense_settings=settings)
    assert len(result.diagnostics["clipure_cos"]["trajectory"]) == 4
    assert result.diagnostics["clipure_cos"]["angle_moved_deg"] > 1.0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"labels": " , "}, "at least one class name"),
        ({"defenses": ["clipure_diff"]}, "CLIPure-Diff needs a diffusion prior"),
        ({"defenses": ["jpeg"]}, "unknown defence 'jpeg'"),
        ({"threat": "oracle"}, "threat model 'oracle'"),
        ({"true_label": "zebra"}, "label 'zebra' is not in the label list"),
        ({"target_label": "zebra"}, "label 'zebra' is not in the label list"),
        ({"seed": -1}, "seed must be an integer from 0"),
        ({"seed": 2**64}, "seed must be an integer from 0"),
        ({"defense_settings": {"clipure_cos": {"steps": -1}}}, "steps: an integer"),
        ({"defense_settings": {"clipure_cos": {"colour": 1}}}, "unsupported setting"),
    ],
)
def test_bad_requests_get_a_clear_message(playground, cat_photo, kwargs, message):
    request = {"image": cat_photo, "labels": LABELS, "attack": ATTACK, **kwargs}
    with pytest.raises(InputError, match=message):
        playground.run(**request)
    assert playground.run(cat_photo, LABELS, ATTACK).labels == LABELS  # still serving
