"""CLIPure-Cos against an independent implementation, on embeddings of known geometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipure_core import CosPurifier, cos_purify
from clipure_core.purifiers import TrajectoryRecorder, polar_step

from .tolerance import RTOL, relative_error

DIM = 64


def embeddings_at_cosines(target: torch.Tensor, cosines, norms, seed: int = 0) -> torch.Tensor:
    """(B, D) float64 vectors with the given cosine to `target` and the given norms."""
    generator = torch.Generator().manual_seed(seed)
    t_hat = F.normalize(target, dim=-1)
    rows = []
    for cos, norm in zip(cosines, norms, strict=True):
        other = torch.randn(DIM, generator=generator, dtype=torch.float64)
        other = F.normalize(other - (other @ t_hat) * t_hat, dim=-1)
        rows.append(norm * (cos * t_hat + math.sqrt(1 - cos**2) * other))
    return torch.stack(rows)


def reference_purify(z, target, steps, step_size):
    """The update rule written out as in the paper's notes, one sample at a time, autograd."""
    out = []
    for sample in z:
        current = sample.clone()
        for _ in range(steps):
            radius = current.norm()
            u = (current / radius).detach()
            leaf = current.detach().requires_grad_(True)
            loss = -F.cosine_similarity(leaf, target, dim=0)
            (grad,) = torch.autograd.grad(loss, leaf)
            grad_u = radius * grad
            u = u - step_size * grad_u / grad_u.norm()
            current = radius * u / u.norm()
        out.append(current)
    return torch.stack(out)


@pytest.fixture
def target():
    return torch.randn(DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(42))


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos(F.cosine_similarity(a, b, dim=-1).clamp(-1, 1)))


@pytest.mark.parametrize("steps,step_size", [(1, 30.0), (3, 30.0), (10, 30.0), (7, 0.2)])
def test_matches_the_reference_update_and_keeps_the_norm(target, steps, step_size):
    z = embeddings_at_cosines(target, [0.1, 0.2, 0.3, -0.2], [1.0, 0.5, 3.0, 1.0])
    ours = cos_purify(z, target, steps, step_size)
    assert torch.allclose(ours, reference_purify(z, target, steps, step_size), atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), z.norm(dim=-1), atol=1e-12)


def test_each_step_rotates_by_atan_of_the_step_size(target):
    z = embeddings_at_cosines(target, [0.25], [1.0])
    one = cos_purify(z, target, steps=1, step_size=30.0)
    assert angle_deg(one, z).item() == pytest.approx(math.degrees(math.atan(30.0)), abs=1e-9)


def test_even_steps_of_size_30_return_to_the_start(target):
    """CLIP-like images sit at cos ~0.1-0.3 to the null prompt, closer than 88.1 degrees:
    step 1 overshoots past the prompt, step 2 comes back, so 10 steps undo themselves."""
    z = embeddings_at_cosines(target, [0.1, 0.2, 0.3], [1.0, 1.0, 1.0])
    for steps in (2, 4, 10):
        assert torch.allclose(cos_purify(z, target, steps, 30.0), z, atol=1e-9)
    odd = cos_purify(z, target, 9, 30.0)
    assert (angle_deg(odd, z) > 80).all()
    small = cos_purify(z, target, 10, 0.05)  # small steps do climb toward the prompt
    assert (F.cosine_similarity(small, target.expand_as(z)) > F.cosine_similarity(z, target)).all()


def test_ten_steps_of_size_30_pass_the_exact_gradient_through_unchanged(target):
    """Near an embedding 73-84 degrees from the prompt the 10 steps are the identity map, so
    the exact gradient through them is the undefended model's: d(out)/dz = I."""
    z = embeddings_at_cosines(target, [0.1, 0.2, 0.3], [1.0, 2.0, 0.5]).requires_grad_(True)
    weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=z.dtype)
    (weights * cos_purify(z, target, 10, 30.0, gradient="full")).sum().backward()
    assert torch.allclose(z.grad, weights, atol=1e-9)
    past = embeddings_at_cosines(target, [0.01], [1.0]).requires_grad_(True)  # 89.4 degrees
    (weights[:1] * cos_purify(past, target, 10, 30.0, gradient="full")).sum().backward()
    assert not torch.allclose(past.grad, weights[:1], atol=1e-3)  # not the identity there


def test_batch_coupled_mode_reproduces_reference_normalisation(target):
    z = embeddings_at_cosines(target, [0.1, 0.3], [1.0, 2.0])
    per_sample = cos_purify(z, target, 1, 30.0)
    coupled = cos_purify(z, target, 1, 30.0, batch_coupled=True)
    assert not torch.allclose(per_sample, coupled)
    alone = torch.cat([cos_purify(row[None], target, 1, 30.0) for row in z])
    assert torch.allclose(per_sample, alone)  # per-sample: batch-independent
    single = z[:1]
    assert torch.allclose(
        cos_purify(single, target, 3, 30.0, batch_coupled=True), cos_purify(single, target, 3, 30.0)
    )
    radius = z.norm(dim=-1, keepdim=True)
    grad = -(
        F.normalize(target, dim=0) / radius
        - (z @ F.normalize(target, dim=0))[:, None] * z / radius**3
    )
    grad_u = radius * grad
    expected = radius * F.normalize(z / radius - 30.0 * grad_u / grad_u.norm(), dim=-1)
    assert torch.allclose(coupled, expected)


def test_full_gradient_is_exact(target):
    z = embeddings_at_cosines(target, [0.2, 0.5], [1.0, 1.5]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: cos_purify(x, target, 3, 0.7), (z,))


def test_paper_gradient_treats_the_inner_gradient_as_constant(target):
    z = embeddings_at_cosines(target, [0.2, 0.5], [1.0, 1.5])
    weights = torch.randn_like(z)

    def grad_of(gradient):
        leaf = z.clone().requires_grad_(True)
        (weights * cos_purify(leaf, target, 2, 30.0, gradient=gradient)).sum().backward()
        return leaf.grad

    # The same steps with the inner gradients frozen at their forward values.
    directions, current = [], z.clone()
    for _ in range(2):
        leaf = current.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(-F.cosine_similarity(leaf, target.expand_as(leaf)).sum(), leaf)
        directions.append(g)
        current = polar_step(current, g, 30.0)
    leaf = z.clone().requires_grad_(True)
    frozen = leaf
    for g in directions:
        frozen = polar_step(frozen, g, 30.0)
    (weights * frozen).sum().backward()
    assert torch.allclose(grad_of("paper"), leaf.grad)
    assert not torch.allclose(grad_of("paper"), grad_of("full"))


def test_bpda_is_identity_backward_and_purification_forward(backbone):
    purifier = CosPurifier(backbone, templates="single", steps=3, step_size=30.0)
    z = torch.randn(2, 32, requires_grad=True)
    weights = torch.randn(2, 32)
    out = purifier(z, gradient="bpda")
    assert torch.allclose(out, purifier(z.detach(), gradient="full"), atol=1e-6)
    (weights * out).sum().backward()
    assert torch.equal(z.grad, weights)


def test_purifier_uses_the_averaged_null_prompt(backbone):
    purifier = CosPurifier(backbone, templates=["a photo of a {}.", "art of the {}."])
    texts = F.normalize(backbone.encode_text(["a photo of a .", "art of the ."]), dim=-1)
    assert relative_error(purifier.null_embedding, texts.mean(dim=0)) < RTOL  # other batches
    assert purifier.settings() == {"steps": 10, "step_size": 30.0, "batch_coupled": False}


def test_trajectory_records_every_step(target):
    classes = F.normalize(torch.randn(3, DIM, dtype=torch.float64), dim=-1)
    recorder = TrajectoryRecorder(target, classes, ["a", "b", "c"])
    z = embeddings_at_cosines(target, [0.2], [1.0])
    cos_purify(z, target, 4, 30.0, on_step=recorder)
    trajectory = recorder.trajectory()
    assert [row["step"] for row in trajectory] == [0, 1, 2, 3, 4]
    assert trajectory[0]["cos_to_start"] == pytest.approx(1.0)
    assert trajectory[0]["cos_to_null"] == pytest.approx(0.2)
    assert trajectory[1]["cos_to_start"] == pytest.approx(math.cos(math.atan(30.0)))
    assert {row["top_class"] for row in trajectory} <= {"a", "b", "c"}
    assert recorder.angle_moved_deg() == pytest.approx(0.0, abs=1e-4)
    assert recorder.max_angle_deg() == pytest.approx(math.degrees(math.atan(30.0)), abs=1e-6)
