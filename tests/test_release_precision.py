"""The release's float16 model emulated in float32 (release precision "emulated") against the
real float16 module on the CPU, the flag's default and refusals, and where it is recorded
(docs/release-precision.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipure_core import CosPurifier, Playground, ZeroShotClassifier
from clipure_core.audit import run_audit
from clipure_core.errors import InputError
from clipure_core.evaluate.config import EvalConfig
from clipure_core.half_emulation import round_to_half, stored_as_half
from clipure_core.release import ReleaseClassifier, release_image_encoder
from clipure_core.threats import attacked_model

from .conftest import LABELS

# Measured on this tiny model, 8 random images (docs/release-precision.md): cosine >= 0.999999,
# relative error <= 1.1e-3 between the two pixel gradients; the documented tolerance:
GRADIENT_COSINE = 0.9999
GRADIENT_RELATIVE_ERROR = 5e-3


@pytest.fixture(scope="module")
def classifier(backbone):
    return ZeroShotClassifier(backbone, LABELS, "single")


@pytest.fixture(scope="module")
def images(backbone):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, backbone.image_size, backbone.image_size, generator=generator)


def release(classifier, precision, purifier=None):
    return attacked_model(classifier, purifier, "release", release_precision=precision)


def pixel_gradient(model, pixels, label):
    x = pixels.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(F.cross_entropy(model(x), label), x)
    return gradient.flatten().double()


def null_at_78_degrees(backbone, pixels) -> CosPurifier:
    """CLIPure-Cos (10 steps of 30) with its null prompt 78 degrees from the image."""
    purifier = CosPurifier(backbone, "single", steps=10, step_size=30.0)
    u = F.normalize(backbone.encode_image(pixels)[0].detach(), dim=-1)
    v = torch.randn(u.shape, generator=torch.Generator().manual_seed(0))
    v = F.normalize(v - (v @ u) * u, dim=-1)
    purifier.null_embedding = math.cos(math.radians(78)) * u + math.sin(math.radians(78)) * v
    return purifier


def test_rounding_is_float16s_both_ways():
    # 1 + 2**-11 lies halfway between 1 and the next float16 (1 + 2**-10): ties go to even;
    # 2**-25 is half the smallest subnormal (2**-24): it rounds to 0; 3 * 2**-25 to 2**-23;
    # 70000 is past float16's largest value (65504): inf
    values = torch.tensor([1 + 2**-11, 2**-25, 3 * 2**-25, 70000.0, 0.1])
    expected = torch.tensor([1.0, 0.0, 2**-23, math.inf, 0.0999755859375])
    assert torch.equal(round_to_half(values), expected)
    assert round_to_half(values).dtype == torch.float32
    x = values[:3].clone().requires_grad_(True)
    stored_as_half(x).backward(torch.tensor([2**-26, 2**-24, 1 + 2**-11]))
    assert torch.equal(x.grad, torch.tensor([0.0, 2**-24, 1.0]))  # the gradient too


def test_emulated_predicts_as_float16_does(classifier, images, backbone):
    with torch.no_grad():
        half = release(classifier, "float16")(images)
        emulated = release(classifier, "emulated")(images)
    assert torch.equal(half.argmax(dim=-1), emulated.argmax(dim=-1))
    purifier = null_at_78_degrees(backbone, images[:1])
    with torch.no_grad():
        half = release(classifier, "float16", purifier)(images)
        emulated = release(classifier, "emulated", purifier)(images)
    assert torch.equal(half.argmax(dim=-1), emulated.argmax(dim=-1))


def test_emulated_gradient_agrees_with_float16s_within_the_documented_tolerance(classifier, images):
    labels = release(classifier, "float16")(images).argmax(dim=-1)
    for i in range(len(images)):
        x, y = images[i : i + 1], labels[i : i + 1]
        half = pixel_gradient(release(classifier, "float16"), x, y)
        emulated = pixel_gradient(release(classifier, "emulated"), x, y)
        assert float(F.cosine_similarity(half, emulated, dim=0)) > GRADIENT_COSINE
        assert float((emulated - half).norm() / half.norm()) < GRADIENT_RELATIVE_ERROR


def test_emulated_gradient_underflows_to_exactly_zero_where_float16s_does(
    classifier, images, backbone
):
    for i in range(3):
        x = images[i : i + 1]
        purifier = null_at_78_degrees(backbone, x)
        y = classifier(x).argmax(dim=-1)
        for precision in ("float16", "emulated"):
            gradient = pixel_gradient(release(classifier, precision, purifier), x, y)
            assert torch.count_nonzero(gradient) == 0
        # in float32 the same gradient is ~1e-16 of the exact one, not 0
        assert torch.count_nonzero(pixel_gradient(classifier.defended(purifier, "paper"), x, y))


def test_emulated_tower_holds_float16_values_and_leaves_the_backbone_alone(backbone, classifier):
    emulated = release_image_encoder(backbone, "emulated")
    assert release_image_encoder(backbone, "emulated") is emulated  # one copy per backbone
    original = dict(backbone.model.visual.named_parameters())
    for name, parameter in emulated.module.named_parameters():
        assert parameter.dtype == torch.float32
        half = "ln_" not in name and any(k in name for k in ("mlp", "attn", "conv1", "proj"))
        expected = round_to_half(original[name]) if half else original[name]
        assert torch.equal(parameter, expected), name
    assert not torch.equal(emulated.module.proj, original["proj"])  # rounding changed it
    assert ReleaseClassifier(classifier).precision == "emulated"  # the default on CPU
    assert ReleaseClassifier(classifier, precision="float16").precision == "float16"


@pytest.mark.parametrize("bad", ["fp16", "Float16", "", "half"])
def test_bad_release_precision_is_refused(classifier, bad, backbone, tmp_path):
    with pytest.raises(InputError, match=r"release precision .*emulated, float16"):
        ReleaseClassifier(classifier, precision=bad)
    with pytest.raises(InputError, match="release precision"):
        run_audit(Playground(backbone, "single"), None, LABELS, release_precision=bad)
    with pytest.raises(InputError, match="release precision"):
        EvalConfig(data="cifar10", out=tmp_path, release_precision=bad)


def test_audit_records_which_release_precision_ran(backbone, cat_photo):
    playground = Playground(backbone, "single")
    options = {"steps": 1, "checks": "zero_gradients", "eps": 4 / 255}
    default = run_audit(playground, cat_photo, LABELS, conditions="release", **options)
    assert default.to_dict()["settings"]["release_precision"] == "emulated"
    half = run_audit(
        playground, cat_photo, LABELS, conditions="release", release_precision="float16", **options
    )
    assert half.settings["release_precision"] == "float16"
    # the release quirk, whichever ran: CLIPure-Cos's pixel gradient is exactly 0
    for result in (default, half):
        row = next(r for r in result.gradients if r.model == "clipure_cos")
        assert row.zero_fraction == 1.0
    without = run_audit(playground, cat_photo, LABELS, conditions="paper", **options)
    assert without.settings["release_precision"] is None
