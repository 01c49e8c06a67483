"""What each threat model really measures, on constructed geometry (see docs/attacks.md).

Random-weight models do not put images ~75 degrees from the null prompt as CLIP does, so the
null prompt is placed at a chosen angle from the image's embedding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from clipure_core import AttackConfig, CosPurifier, ZeroShotClassifier, cos_purify, craft_attack
from clipure_core.attacks import build_attack
from clipure_core.release import ReleaseClassifier, release_image_encoder
from clipure_core.threats import THREATS, attacked_model

from .conftest import LABELS

BPDA_LIMIT_DEG = math.degrees(math.atan(30.0))  # 88.09: one step of size 30 turns this far
# The tiny model's image tower as the release cast it: float16 where a parameter's name has
# "mlp", "attn", "conv1" or "proj" (the release's rule), float32 for the rest (layer norms,
# class and positional embeddings). Written out, not derived from the module's key list.
RELEASE_HALF = {"proj", "conv1.weight"} | {
    f"transformer.resblocks.{block}.{name}"
    for block in (0, 1)
    for name in (
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
    )
}
RELEASE_FULL = {
    "class_embedding",
    "positional_embedding",
    "ln_pre.weight",
    "ln_pre.bias",
    "ln_post.weight",
    "ln_post.bias",
} | {
    f"transformer.resblocks.{b}.ln_{i}.{p}"
    for b in (0, 1)
    for i in (1, 2)
    for p in ("weight", "bias")
}


@pytest.fixture(scope="module")
def classifier(backbone):
    return ZeroShotClassifier(backbone, LABELS, "single")


@pytest.fixture(scope="module")
def pixels(backbone, cat_photo):
    return backbone.prepare(cat_photo).unsqueeze(0)


def purifier_with_null_at(backbone, z: torch.Tensor, degrees: float) -> CosPurifier:
    """CLIPure-Cos (10 steps of 30) whose null prompt lies `degrees` away from z."""
    purifier = CosPurifier(backbone, "single", steps=10, step_size=30.0)
    u = F.normalize(z[0].detach(), dim=-1)
    v = torch.randn(u.shape, generator=torch.Generator().manual_seed(0))
    v = F.normalize(v - (v @ u) * u, dim=-1)
    angle = math.radians(degrees)
    purifier.null_embedding = math.cos(angle) * u + math.sin(angle) * v
    return purifier


def pixel_gradient(model: nn.Module, pixels: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    x = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), label), x)
    return grad.flatten()


def direction_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    # divide by the norms ourselves: these gradients are ~1e-16, below the eps that
    # cosine_similarity and normalize clamp norms to
    a, b = a.double(), b.double()
    return float((a / a.norm()) @ (b / b.norm()))


def test_paper_gradient_is_attenuated_but_its_signal_points_the_right_way(
    backbone, classifier, pixels
):
    z = backbone.encode_image(pixels)
    purifier = purifier_with_null_at(backbone, z, 78.0)
    label = classifier(pixels).argmax(dim=-1)
    # float32, at the pixels: ~1e-16 of the exact gradient (its direction there is partly
    # float round-off, and varies between machines: the audit measures it per image)
    paper = pixel_gradient(attacked_model(classifier, purifier, "paper"), pixels, label)
    full = pixel_gradient(attacked_model(classifier, purifier, "full"), pixels, label)
    assert 0 < paper.norm() < 1e-10 * full.norm()
    # float64, at the embedding: each of the 10 steps divides it by sqrt(1 + 30^2), and
    # without round-off it points the way the exact gradient does
    z64, classes = z.detach().double(), classifier.class_embeddings.double()
    grads = {}
    for mode in ("paper", "full"):
        zz = z64.clone().requires_grad_(True)
        purified = cos_purify(zz, purifier.null_embedding.double(), 10, 30.0, gradient=mode)
        logits = 100 * F.normalize(purified, dim=-1) @ classes.T
        (grads[mode],) = torch.autograd.grad(F.cross_entropy(logits, label), zz)
    ratio = float(grads["paper"].norm() / grads["full"].norm())
    assert ratio == pytest.approx((1 + 30.0**2) ** -5, rel=0.05)
    assert direction_cosine(grads["paper"][0], grads["full"][0]) > 0.95


def test_batch_coupled_steps_at_batch_size_two_turn_the_paper_gradient_into_noise(
    backbone, classifier, pixels, cat_photo
):
    pair = torch.cat([pixels, backbone.prepare(cat_photo.rotate(90)).unsqueeze(0)])
    purifier = purifier_with_null_at(backbone, backbone.encode_image(pixels), 78.0)
    purifier.batch_coupled = True  # the release's step, normalised over the batch
    labels = classifier(pair).argmax(dim=-1)
    grads = {}
    for threat in ("paper", "full"):
        x = pair.clone().requires_grad_(True)
        loss = F.cross_entropy(attacked_model(classifier, purifier, threat)(x), labels)
        (grads[threat],) = torch.autograd.grad(loss, x)
    for paper, full in zip(grads["paper"], grads["full"], strict=True):
        assert abs(direction_cosine(paper.flatten(), full.flatten())) < 0.5
        assert float((paper.sign() == full.sign()).float().mean()) < 0.65


def test_release_gradient_is_exactly_zero(backbone, classifier, pixels):
    z = backbone.encode_image(pixels)
    purifier = purifier_with_null_at(backbone, z, 78.0)
    label = classifier(pixels).argmax(dim=-1)
    released = pixel_gradient(attacked_model(classifier, purifier, "release"), pixels, label)
    assert torch.count_nonzero(released) == 0
    # The float16 model itself passes gradients: the zeros come from the purifier's
    # attenuation underflowing in float16.
    undefended = pixel_gradient(attacked_model(classifier, None, "release"), pixels, label)
    assert torch.count_nonzero(undefended) > 0.9 * undefended.numel()
    assert direction_cosine(undefended, pixel_gradient(classifier, pixels, label)) > 0.9
    # so PGD under "release" cannot move the image at all
    config = AttackConfig("pgd", "linf", 8 / 255, 5, random_start=False)
    adversarial = craft_attack(
        attacked_model(classifier, purifier, "release"), pixels, label, config, seed=0
    )
    assert torch.equal(adversarial, pixels)


def test_release_model_casts_what_the_release_cast_and_leaves_the_backbone_alone(
    backbone, classifier, pixels
):
    encoder = release_image_encoder(backbone)
    assert release_image_encoder(backbone) is encoder  # one copy per backbone
    dtypes = {name: parameter.dtype for name, parameter in encoder.named_parameters()}
    assert {name for name, dtype in dtypes.items() if dtype == torch.float16} == RELEASE_HALF
    assert {name for name, dtype in dtypes.items() if dtype == torch.float32} == RELEASE_FULL
    assert all(p.dtype == torch.float32 for p in backbone.model.parameters())
    # Its predictions are CLIP's up to half-precision rounding.
    logits = ReleaseClassifier(classifier)(pixels)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, classifier(pixels), atol=0.05 * logits.abs().max())


def test_release_couples_the_batch_without_changing_the_shared_purifier(backbone, classifier):
    purifier = CosPurifier(backbone, "single")
    model = ReleaseClassifier(classifier, purifier)
    assert model.purifier.batch_coupled and not purifier.batch_coupled
    assert model.purifier.null_embedding is purifier.null_embedding


def test_bpda_gradient_flips_past_atan_of_the_step_size(backbone, classifier, pixels):
    """Past 88.09 degrees from the null prompt ten steps turn the embedding ~176 degrees: the
    exact gradient is then minus the BPDA one; closer than that they agree."""
    z = backbone.encode_image(pixels).detach()
    label = classifier(pixels).argmax(dim=-1)
    cosines = {}
    for degrees in (80.0, 89.0):
        purifier = purifier_with_null_at(backbone, z, degrees)
        grads = {}
        for mode in ("full", "bpda"):
            zz = z.clone().requires_grad_(True)
            logits = classifier.logits_from_embeddings(purifier(zz, gradient=mode))
            (grads[mode],) = torch.autograd.grad(F.cross_entropy(logits, label), zz)
        cosines[degrees] = direction_cosine(grads["full"][0], grads["bpda"][0])
        turned = math.degrees(math.acos(float(F.cosine_similarity(purifier(z), z).clamp(-1, 1))))
        assert (turned > 170) == (degrees > BPDA_LIMIT_DEG), (degrees, turned)
    assert cosines[80.0] > 0.99
    assert cosines[89.0] < -0.99


def test_every_threat_is_described():
    assert set(THREATS) == {"transfer", "release", "paper", "bpda", "full"}
    assert "exactly 0" in THREATS["release"] and "right way" in THREATS["paper"]


class UnluckyOnTheCleanImage(nn.Module):
    """A model that, as a random defence can by chance, misclassifies the clean image."""

    def __init__(self, model: nn.Module, clean: torch.Tensor) -> None:
        super().__init__()
        self.model, self.clean, self.calls = model, clean, 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = self.model(pixels)
        return -logits if torch.equal(pixels, self.clean) else logits


@pytest.mark.parametrize("method", ["apgd-ce", "apgd-t", "square"])
def test_every_image_is_attacked_even_when_one_forward_misclassifies_it(classifier, pixels, method):
    label = classifier(pixels).argmax(dim=-1)
    config = AttackConfig(method, "linf", 8 / 255, 20 if method == "square" else 3)
    ours = UnluckyOnTheCleanImage(classifier, pixels)
    build_attack(ours, config, len(LABELS), seed=0)(pixels, label)
    assert ours.calls > 3
    # torchattacks' own class asks once, believes the lie and attacks nothing.
    stock = UnluckyOnTheCleanImage(classifier, pixels)
    torchattacks.APGD(stock, "Linf", 8 / 255, 3, n_restarts=1, seed=0)(pixels, label)
    assert stock.calls == 1


@pytest.mark.parametrize(
    "config",
    [
        AttackConfig("pgd", steps=4),
        AttackConfig("pgd", steps=3, eot_samples=2),
        AttackConfig("fgsm"),
        AttackConfig("apgd-ce", steps=4, restarts=2),
        AttackConfig("apgd-t", steps=3),
        AttackConfig("autoattack", steps=2),
        AttackConfig("square", steps=30),
        AttackConfig("noise"),
    ],
    ids=lambda c: c.method,
)
def test_query_estimate_bounds_the_queries_made(classifier, pixels, config):
    label = classifier(pixels).argmax(dim=-1)
    queries = []
    craft_attack(classifier, pixels, label, config, seed=0, on_query=queries.append)
    assert len(queries) <= config.estimated_queries(len(LABELS))
    assert (len(queries) == 0) == (config.method == "noise")  # noise never asks the model


def test_playground_runs_every_threat_and_the_new_attacks(backbone, cat_photo):
    from clipure_core import Playground

    playground = Playground(backbone, "single")
    for threat in THREATS:
        result = playground.run(cat_photo, LABELS, AttackConfig(steps=2), threat, ["clipure_cos"])
        expected = "undefended" if threat == "transfer" else "clipure_cos"
        assert result.image_for["clipure_cos"] == expected, threat
    for method in ("square", "noise"):
        result = playground.run(cat_photo, LABELS, AttackConfig(method, steps=20), "transfer", [])
        size = result.to_dict()["perturbation"]["linf"]
        assert size <= 4 / 255 + 1e-6 and result.settings["attack"]["method"] == method
        if method == "noise":  # noise always moves the image; Square keeps it if it failed
            assert size > 0
