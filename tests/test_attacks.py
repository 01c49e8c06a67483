"""Attacks via torchattacks: budgets, 8-bit rounding, threat-model gradients, seeds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipure_core import AttackConfig, CosPurifier, InputError, ZeroShotClassifier, craft_attack
from clipure_core.pixels import quantize_in_ball
from clipure_core.threats import attacked_model

from .conftest import LABELS

CONFIGS = [
    AttackConfig("pgd", "linf", 4 / 255, 5),
    AttackConfig("pgd-l2", "l2", 0.5, 5),
    AttackConfig("fgsm", "linf", 4.5 / 255, 1),
    AttackConfig("apgd-ce", "linf", 8 / 255, 5),
    AttackConfig("apgd-dlr", "l2", 0.5, 5),
    AttackConfig("apgd-t", "linf", 4 / 255, 3),
    AttackConfig("apgd-t", "l2", 0.5, 3),
    AttackConfig("autoattack", "linf", 1 / 255, 3),
    AttackConfig("autoattack-standard", "linf", 16 / 255, 2),
    AttackConfig("pgd", "linf", 3 / 255, 3, eot_samples=2),
    AttackConfig("square", "linf", 2 / 255, 50),
    AttackConfig("square", "l2", 0.3, 50),
    AttackConfig("noise", "linf", 4 / 255),
    AttackConfig("noise", "l2", 0.5),
]


@pytest.fixture(scope="module")
def classifier(backbone):
    return ZeroShotClassifier(backbone, LABELS, "single")


@pytest.fixture(scope="module")
def pixels(backbone, cat_photo):
    return torch.stack([backbone.prepare(cat_photo), backbone.prepare(cat_photo.rotate(90))])


def within(delta: torch.Tensor, norm: str, eps: float) -> bool:
    flat = delta.flatten(1)
    size = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
    return bool((size <= eps + 1e-6).all())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.method}-{c.norm}-eot{c.eot_samples}")
def test_perturbation_stays_in_budget_before_and_after_8bit_rounding(classifier, pixels, config):
    labels = classifier(pixels).argmax(dim=-1)
    adversarial = craft_attack(classifier, pixels, labels, config, seed=0, num_classes=len(LABELS))
    assert adversarial.shape == pixels.shape
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert within(adversarial - pixels, config.norm, config.eps)
    # Every image comes back perturbed: the strongest point the attack saw, never the clean
    # image (torchattacks' APGD, Square and MultiAttack returned clean pixels where they
    # found no adversarial example).
    assert not (adversarial == pixels).flatten(1).all(dim=1).any()
    rounded = quantize_in_ball(pixels, adversarial, config.norm, config.eps)
    assert torch.equal(rounded, (rounded * 255).round() / 255)
    assert within(rounded - pixels, config.norm, config.eps)
    assert rounded.min() >= 0 and rounded.max() <= 1


def test_quantisation_never_leaves_the_ball_on_its_edge():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (8, 3, 16, 16), generator=generator) / 255
    for norm, eps in (("linf", 4.5 / 255), ("linf", 4 / 255), ("l2", 0.3), ("l2", 1.0)):
        direction = torch.randn(clean.shape, generator=generator)
        if norm == "linf":
            delta = eps * direction.sign()
        else:
            delta = eps * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        adversarial = (clean + delta).clamp(0, 1)
        rounded = quantize_in_ball(clean, adversarial, norm, eps)
        assert within(rounded - clean, norm, eps)
        # ... and keeps the budget: nearly the whole eps is still used after rounding.
        kept = (
            (rounded - clean).flatten(1).norm(dim=1)
            if norm == "l2"
            else ((rounded - clean).flatten(1).abs().amax(dim=1))
        )
        used = (
            (adversarial - clean).flatten(1).norm(dim=1)
            if norm == "l2"
            else ((adversarial - clean).flatten(1).abs().amax(dim=1))
        )
        levels = int(eps * 255 + 1e-4) / 255
        assert (kept >= torch.minimum(0.95 * used, torch.full_like(used, levels))).all()
    exact = quantize_in_ball(clean, (clean + 4 / 255).clamp(0, 1), "linf", 4 / 255)
    assert (exact - clean).abs().max() * 255 == pytest.approx(4, abs=1e-4)  # 4/255 keeps 4 levels


def test_each_threat_model_differentiates_the_model_it_names(backbone, classifier, pixels):
    purifier = CosPurifier(backbone, "single", steps=10, step_size=30.0)
    labels = torch.tensor([0, 1])
    grads = {}
    for threat in ("transfer", "paper", "bpda", "full"):
        x = pixels.clone().requires_grad_(True)
        F.cross_entropy(attacked_model(classifier, purifier, threat)(x), labels).backward()
        grads[threat] = x.grad
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, threat
    assert attacked_model(classifier, purifier, "transfer") is classifier
    # BPDA back-propagates the loss at the purified point straight into the encoder.
    x = pixels.clone().requires_grad_(True)
    z = backbone.encode_image(x)
    purified = purifier(z.detach()).requires_grad_(True)
    loss = F.cross_entropy(classifier.logits_from_embeddings(purified), labels)
    (upstream,) = torch.autograd.grad(loss, purified)
    (expected,) = torch.autograd.grad(z, x, upstream)
    assert torch.allclose(grads["bpda"], expected, atol=1e-6)
    # Held constant, the inner gradient shrinks by sqrt(1 + 30^2) per step: ten steps leave
    # ~1e-15 of it (its direction is tested in test_threats.py) ...
    assert grads["paper"].norm() < 1e-6 * grads["bpda"].norm()
    # ... while the exact map is the identity near images closer than 88.1 degrees to the null
    # prompt (ten steps undo themselves), so its exact gradient is the undefended one.
    null = purifier.null_embedding
    assert (F.cosine_similarity(z, null.expand_as(z)) > math.cos(math.atan(30.0))).all()
    tolerance = 1e-3 * grads["transfer"].abs().max()
    assert torch.allclose(grads["full"], grads["transfer"], atol=tolerance)


def test_targeted_attack_reaches_the_target(classifier, pixels):
    x = pixels[:1]
    clean = classifier(x)
    target = int(clean.argmin())
    config = AttackConfig("pgd", "linf", 32 / 255, 40, targeted_label=target)
    adversarial = craft_attack(classifier, x, clean.argmax(dim=-1), config, seed=0)
    assert int(classifier(adversarial).argmax()) == target


def test_seeds_make_attacks_reproducible_and_leave_global_rng_alone(classifier, pixels):
    config = AttackConfig("pgd", "linf", 4 / 255, 2)
    labels = torch.tensor([0, 0])
    state = torch.get_rng_state()
    first = craft_attack(classifier, pixels, labels, config, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, craft_attack(classifier, pixels, labels, config, seed=1))
    assert not torch.equal(first, craft_attack(classifier, pixels, labels, config, seed=2))


def test_eot_on_a_deterministic_model_equals_plain_pgd(classifier, pixels):
    labels = torch.tensor([0, 1])
    plain = craft_attack(classifier, pixels, labels, AttackConfig(steps=3), seed=5)
    eot = craft_attack(classifier, pixels, labels, AttackConfig(steps=3, eot_samples=3), seed=5)
    assert torch.equal(plain, eot)


def test_progress_callback_counts_model_queries(classifier, pixels):
    calls = []
    craft_attack(
        classifier,
        pixels,
        torch.tensor([0, 1]),
        AttackConfig(steps=7),
        seed=0,
        num_classes=len(LABELS),
        on_query=calls.append,
    )
    # 2 forwards probing for randomness, 7 steps, then the last iterate is judged
    assert calls == list(range(1, 11))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"eps": -1 / 255}, "eps must be in"),
        ({"eps": 0.0}, "eps must be in"),
        ({"eps": 2.0}, "eps must be in"),
        ({"eps": math.nan}, "finite"),
        ({"eps": math.inf}, "finite"),
        ({"steps": 0}, "steps must be an integer from 1"),
        ({"steps": -3}, "steps must be an integer from 1"),
        ({"steps": 10**6}, "steps must be an integer from 1 to 1000"),
        ({"method": "deepfool"}, "use one of"),
        ({"method": "pgd", "norm": "l2"}, "supports norm linf"),
        ({"method": "apgd-ce", "targeted_label": 1}, "untargeted"),
        ({"method": "pgd-l2", "norm": "l2", "eot_samples": 4}, "no EOT variant"),
        ({"eot_samples": 0}, "eot_samples"),
        ({"alpha": -0.1}, "alpha"),
        ({"method": "square", "steps": 0}, "steps \\(queries\\)"),
        ({"method": "square", "eot_samples": 2}, "no EOT"),
        ({"method": "pgd", "restarts": 3}, "restarts apply to"),
        ({"method": "apgd-ce", "restarts": 0}, "restarts must be"),
        ({"method": "noise", "norm": "l1"}, "supports norm"),
    ],
)
def test_absurd_settings_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(InputError, match=message):
        AttackConfig(**kwargs)


def test_dlr_attacks_need_enough_classes(backbone, pixels):
    few = ZeroShotClassifier(backbone, ["cat", "dog", "car"], "single")
    with pytest.raises(InputError, match="at least 4 class labels"):
        craft_attack(few, pixels, torch.tensor([0, 1]), AttackConfig("apgd-t", steps=2))


def test_l2_attack_on_a_model_size_image_survives_rounding():
    """A dense L2 perturbation on the sphere of a 224 x 224 image keeps ~all of its size."""
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 256, (2, 3, 224, 224), generator=generator) / 255
    direction = torch.randn(clean.shape, generator=generator)
    delta = 0.5 * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    adversarial = (clean + delta).clamp(0, 1)
    rounded = quantize_in_ball(clean, adversarial, "l2", 0.5)
    size = (rounded - clean).flatten(1).norm(dim=1)
    assert (size <= 0.5 + 1e-6).all() and (size >= 0.45).all()


def test_pgd_l2_runs_on_prepared_photos(backbone, cat_photo):
    from clipure_core import Playground

    result = Playground(backbone, "single").run(
        cat_photo, LABELS, AttackConfig("pgd-l2", "l2", 0.5, 3), "transfer", []
    )
    assert 0 < result.to_dict()["perturbation"]["l2"] <= 0.5 + 1e-6


def test_linf_eps_below_one_level_is_refused_and_fractions_are_announced(backbone, cat_photo):
    from clipure_core import Playground

    with pytest.raises(InputError, match="below one 8-bit level"):
        AttackConfig(eps=0.5 / 255)
    result = Playground(backbone, "single").run(
        cat_photo, LABELS, AttackConfig(eps=4.5 / 255, steps=2), defenses="clipure_cos"
    )
    assert "eps 4.50/255 acts as 4/255" in " ".join(result.notices)
    assert result.models == ["undefended", "clipure_cos"]  # a comma string of defences
    assert AttackConfig("apgd-ce").to_dict()["step_size"] is None
