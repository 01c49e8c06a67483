"""CUDA: the text path, fp16/bf16 and a whole request on a GPU. Marked `cuda`: they run (never
skip) where CUDA is present, and are deselected on CPU (-m "not cuda"); `bash bench/gpu_check.sh`
runs them on a GPU."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from clipure_core import AttackConfig, Playground, load_backbone
from clipure_core import text_embeddings as cache

from .conftest import LABELS, TINY_MODEL
from .test_text_embeddings import PROMPTS, reference
from .tolerance import relative_error

pytestmark = pytest.mark.cuda
# Deterministic cuBLAS needs this before CUDA starts (this module is imported at collection).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
HALF_TOLERANCE = {"fp32": 1e-5, "bf16": 3e-2, "fp16": 5e-3}  # relative, vs encode_text


def test_cuda_is_there():
    assert torch.cuda.is_available(), "a `cuda` test ran without CUDA: deselect -m 'not cuda'"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_text_at_prompt_length_equals_encode_text_on_cuda(precision):
    backbone = load_backbone("ViT-B-32", "random", device="cuda", precision=precision)
    assert backbone.text_at_prompt_length and backbone.device.type == "cuda"
    prompts = PROMPTS * 40  # several batches
    expected = reference(backbone.model, backbone.tokenize(prompts))
    actual = backbone.encode_text(prompts, batch_size=64)
    assert actual.device.type == "cuda" and actual.dtype == torch.float32
    assert relative_error(actual, expected) < HALF_TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_request_on_cuda_in_each_precision(precision, tiny_checkpoint, cat_photo):
    backbone = load_backbone(TINY_MODEL, str(tiny_checkpoint), "cuda", precision)
    fp32_cpu = load_backbone(TINY_MODEL, str(tiny_checkpoint), "cpu", "fp32")
    pixels = fp32_cpu.prepare(cat_photo).unsqueeze(0)
    z = backbone.encode_image(pixels.cuda()).cpu()
    assert F.cosine_similarity(z, fp32_cpu.encode_image(pixels)).item() > 0.99
    embeddings = cache.class_embeddings(backbone, LABELS, ["a photo of a {}."])
    assert embeddings.device.type == "cuda"
    result = Playground(backbone, "single").run(
        cat_photo, LABELS, AttackConfig("pgd", "linf", 4 / 255, 3), "bpda", ["clipure_cos"], seed=0
    )
    assert result.settings["device"].startswith("cuda")
    assert result.settings["precision"] == precision
    for probabilities in result.probabilities.values():
        for probs in probabilities.values():
            assert all(p == p for p in probs) and sum(probs) == pytest.approx(1, abs=1e-3)
    assert result.to_dict()["perturbation"]["linf"] <= 4 / 255 + 1e-6


def test_same_seed_same_result_on_cuda_with_deterministic_algorithms(tiny_checkpoint, cat_photo):
    backbone = load_backbone(TINY_MODEL, str(tiny_checkpoint), "cuda", "fp32")
    playground = Playground(backbone, "single")
    attack = AttackConfig("pgd", "linf", 4 / 255, 3)
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        first = playground.run(cat_photo, LABELS, attack, "full", ["clipure_cos"], seed=3)
        second = playground.run(cat_photo, LABELS, attack, "full", ["clipure_cos"], seed=3)
    finally:
        torch.use_deterministic_algorithms(False)
    assert first.probabilities == second.probabilities
    assert first.adversarial_image.tobytes() == second.adversarial_image.tobytes()
