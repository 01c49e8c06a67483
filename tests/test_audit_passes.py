"""What the default audit costs, counted in image-encoder passes (issue 15 item 3), and the
shared encodings (clipure_core/encoding_memo.py) that save some of them without changing a
result. The counts are deterministic (bench/pass_counter.py), so a regression that adds
passes fails here; bench/audit_latency.py turns them into time."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipure_core import Playground
from clipure_core.audit import run_audit, runner
from clipure_core.encoding_memo import fresh_encodings, remembering_encodings
from clipure_core.threats import attacked_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pass_counter", ROOT / "bench" / "pass_counter.py")
pass_counter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pass_counter)
PassCounter = pass_counter.PassCounter

BENCH_LABELS = "cat, dog, car, airplane, coffee mug, rocket, astronaut, bird, ship, truck"

# The default audit (10 PGD steps, Square 100 queries, every condition and check, CLIPure-Cos
# beside undefended CLIP, release emulated on CPU) of the cat photo on the tiny model, per
# stage (forward+backward passes / forwards alone); float32 at batch 1 unless said:
#   randomness      0 / 1   a second encoding of the photo (the first is the clean pass)
#   gradients       4 / 0   exact, paper and BPDA gradients (undefended: full only)
#                  +2 emulated  the release's, both models
#   noise           0 / 2   its judgements (before and after 8-bit rounding, one image)
#   transfer, full, bpda        10 / 2 each  PGD: 10 steps, then the last iterate judged and
#                               the 8-bit image judged (its matrix evaluation reuses it)
#   paper          10 / 3   the same, and its end point traced (an earlier iterate, seen
#                           only with autograd on)
#   release        20 / 4 emulated, 0 / 2 float32   both models' PGD; their images
#                           evaluated on the float32 model
#   square          0 / 196 100 queries per model and its points judged, less the
#                           points queried twice
#   single_step     2 / 2   FGSM per model (one gradient, its 8-bit image judged)
#   unbounded       8 / 5, emulated 6 / 3   2-step rungs of the eps ladder that ran
#   convergence    20 / 2   the cheapest unfooled condition with 20 steps
#   binarization    9 / 13, emulated 3 / 2  head points (6) and 3-step attacks
#   batch_coupling  16 at batch 2 / 2   16 coupled pairs; the 2 partners encoded
SHARED = {
    ("forward", "float32", 1): 318,
    ("backward", "float32", 1): 83,
    ("forward", "float32", 2): 16,
    ("backward", "float32", 2): 16,
    ("forward", "emulated", 1): 40,
    ("backward", "emulated", 1): 31,
}
# Without the shared encodings every attack's end point is encoded again by the trace, by
# the 8-bit rounding's first judgement and by the matrix's evaluation: 54 float32 and 11
# emulated forwards more (transfer, bpda, full 3 each, paper 2, noise 1, single_step 6,
# square 14, unbounded 14 + 6 emulated, convergence 2, binarization 6 + 1 emulated,
# release 4 emulated); not one forward+backward.
UNSHARED = SHARED | {("forward", "float32", 1): 372, ("forward", "emulated", 1): 51}


def assert_counts(counts, expected: dict) -> None:
    """At most the counted passes (a change that adds passes fails), and at least 98 % of
    them: where an attack stops (Square at its first fooling query, the eps ladder at its
    first fooling rung) is a decision at a near-tie on this random model, which the last bits
    of the text embeddings (cached from another batch in a full run) or of another CPU's
    kernels can move by a query (the suite's rule: decisions exactly only where they are not
    near a tie; see docs/development.md)."""
    for key, literal in expected.items():
        assert 0.98 * literal <= counts[key] <= literal, (key, counts[key], literal)
    assert set(counts) == set(expected)


def _audit(playground, photo) -> tuple[dict, PassCounter]:
    with PassCounter() as counter:
        result = run_audit(playground, photo, BENCH_LABELS)
    assert result.settings["release_precision"] == "emulated"
    found = result.to_dict()
    del found["timings_ms"]
    return found, counter


def test_default_audit_passes_and_what_sharing_saves_without_changing_a_result(
    backbone, cat_photo, monkeypatch
):
    playground = Playground(backbone, templates="ensemble")
    run_audit(playground, cat_photo, BENCH_LABELS, conditions="clean")  # text cached
    shared, counter = _audit(playground, cat_photo)
    assert_counts(counter.counts, SHARED)
    monkeypatch.setattr(runner, "remembering_encodings", contextlib.nullcontext)
    unshared, unshared_counter = _audit(playground, cat_photo)
    assert_counts(unshared_counter.counts, UNSHARED)
    # the sharing saves forwards only: 54 float32 and 11 emulated ones in the run counted above
    saved = {key: unshared_counter.counts[key] - counter.counts[key] for key in SHARED}
    assert saved[("forward", "float32", 1)] >= 50 and saved[("forward", "emulated", 1)] >= 10
    assert all(saved[key] == 0 for key in SHARED if key[0] == "backward")
    # the same process and batches: every cell, gradient, check and rounding bit for bit
    assert shared == unshared
    assert len(shared["checks"]) == 51 and len(shared["matrix"]) == 16


def test_an_encoding_is_remembered_only_for_the_same_values_shape_and_no_grad(backbone):
    pixels = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    one_level = pixels.clone()
    one_level[0, 0, 0, 0] += 1 / 255
    with PassCounter() as counter, remembering_encodings(), torch.no_grad():
        first = backbone.encode_image(pixels)
        first.zero_()  # a copy: the caller may write
        again = backbone.encode_image(pixels.clone())
        backbone.encode_image(one_level)  # one value one 8-bit level off: encoded
        backbone.encode_image(pixels.repeat(2, 1, 1, 1))  # another batch shape: encoded
        with fresh_encodings():
            fresh = backbone.encode_image(pixels)  # encoded afresh
        backbone.encode_image(pixels)  # still remembered after it
    assert counter.counts[("forward", "float32", 1)] == 3
    assert counter.counts[("forward", "float32", 2)] == 1
    assert torch.equal(again, fresh) and not torch.equal(again, first)
    with PassCounter() as counter, remembering_encodings():
        leaf = pixels.clone().requires_grad_(True)
        for _ in range(2):  # with autograd: never remembered, the gradient flows
            torch.autograd.grad(backbone.encode_image(leaf).sum(), leaf)
    with PassCounter() as outside, torch.no_grad():  # outside the block: nothing remembered
        backbone.encode_image(pixels)
        backbone.encode_image(pixels)
    assert dict(counter.counts) == {("forward", "float32", 1): 2, ("backward", "float32", 1): 2}
    assert dict(outside.counts) == {("forward", "float32", 1): 2}


@pytest.mark.parametrize("precision", ["float32", "emulated"])
def test_the_pass_counter_counts_kind_precision_and_batch(backbone, precision):
    classifier = Playground(backbone, "single").classifier(["cat", "dog"])
    model = classifier
    if precision == "emulated":
        model = attacked_model(classifier, None, "release", release_precision="emulated")
    pixels = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    with PassCounter() as counter:
        with torch.no_grad():
            model(pixels[:1])
        leaf = pixels.clone().requires_grad_(True)
        loss = F.cross_entropy(model(leaf), torch.tensor([0, 1]))
        torch.autograd.grad(loss, leaf)
    assert dict(counter.counts) == {
        ("forward", precision, 1): 1,
        ("forward", precision, 2): 1,
        ("backward", precision, 2): 1,
    }
