"""bf16 and fp16 on CPU: the tiny model loads, attacks, purifies and caches in each precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipure_core import AttackConfig, Playground, load_backbone
from clipure_core import text_embeddings as cache
from clipure_core.loading import precision_notice

from .conftest import LABELS, TINY_MODEL

PROMPTS = ["a photo of a cat.", "a drawing of a dog.", "itap of the coffee mug."]


@pytest.fixture(scope="module")
def fp32(tiny_checkpoint):
    return load_backbone(TINY_MODEL, str(tiny_checkpoint), device="cpu", precision="fp32")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_run_on_cpu_close_to_fp32(
    precision, tiny_checkpoint, fp32, cat_photo, recwarn
):
    backbone = load_backbone(TINY_MODEL, str(tiny_checkpoint), "cpu", precision)
    warned = [w for w in recwarn if "fp16 on CPU is slow" in str(w.message)]
    assert len(warned) == (precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert backbone.info.precision == precision and backbone.input_dtype == dtype
    assert backbone.model.visual.conv1.weight.dtype == dtype
    pixels = backbone.prepare(cat_photo).unsqueeze(0).requires_grad_(True)
    z = backbone.encode_image(pixels)
    assert z.dtype == torch.float32
    assert F.cosine_similarity(z, fp32.encode_image(pixels.detach())).item() > 0.99
    (gradient,) = torch.autograd.grad(z.sum(), pixels)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    text = backbone.encode_text(PROMPTS)
    assert text.dtype == torch.float32
    assert F.cosine_similarity(text, fp32.encode_text(PROMPTS)).min().item() > 0.99
    # the cache keeps each precision apart
    assert cache.group_key(backbone, PROMPTS) != cache.group_key(fp32, PROMPTS)

    result = Playground(backbone, "single").run(
        cat_photo, LABELS, AttackConfig("pgd", "linf", 4 / 255, 2), "bpda", ["clipure_cos"]
    )
    assert result.settings["precision"] == precision
    for probabilities in result.probabilities.values():
        for probs in probabilities.values():
            assert all(p == p for p in probs) and sum(probs) == pytest.approx(1, abs=1e-3)
    assert result.to_dict()["perturbation"]["linf"] <= 4 / 255 + 1e-6
    slow = [notice for notice in result.notices if "fp16 on CPU is slow" in notice]
    assert len(slow) == (precision == "fp16")


def test_notice_only_for_fp16_on_cpu():
    assert "bf16" in precision_notice("fp16", "cpu")
    assert precision_notice("bf16", "cpu") is None
    assert precision_notice("fp32", "cpu") is None
    assert precision_notice("fp16", "cuda") is None
