"""The checklist checks on real audits: for each, a constructed defence under which it must
fail and one under which it must pass, with the expected statuses written down.

The toy defences act on the unit image embedding; `ANCHOR` is the cat photo's. On the tiny
model, PGD at 4/255 fools undefended CLIP with 2 steps but not with 1 (logit margins ~0.008,
far above float round-off), and 4/255 moves the embedding ~0.15 from the anchor, 8/255 ~0.29.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipure_core import InputError, Playground, Purifier
from clipure_core.audit import CHECKS, UNDEFENDED, checklist, run_audit
from clipure_core.audit.gradients import GradientStats
from clipure_core.audit.probes import BinaryHead
from clipure_core.cli import main
from clipure_core.purifiers import PURIFIERS

from .conftest import ASSETS, LABELS, TINY_MODEL
from .test_audit import playground_with_null_at

NEW_CHECKS = [
    "loss_progress",
    "convergence",
    "unbounded",
    "eps_monotone",
    "transfer_vs_white_box",
    "binarization",
    "batch_coupling",
]


class Toy(Purifier):
    """A toy defence around the cat photo's unit embedding (`anchor`)."""

    name = title = "toy"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.flag_prefix = cls.name.replace("_", "-")  # CLI flags of its own (--identity-steps)

    def __init__(self, backbone, templates="ensemble", steps=1, step_size=1.0) -> None:
        super().__init__(steps=steps, step_size=step_size)
        photo = Image.open(ASSETS / "chelsea.png")
        with torch.no_grad():
            z = backbone.encode_image(backbone.prepare(photo).unsqueeze(0))[0]
        self.anchor = F.normalize(z, dim=-1)


class Identity(Toy):
    """No defence at all: the exact gradient of undefended CLIP."""

    name, title = "identity", "Identity"

    def purify(self, z, gradient, on_step=None):
        return F.normalize(z, dim=-1)


class ZeroGradient(Toy):
    """Undefended CLIP's predictions with a constant-zero gradient (the graph is kept)."""

    name, title = "zero_grad", "ZeroGrad"

    def purify(self, z, gradient, on_step=None):
        return F.normalize(z.detach() + 0 * z, dim=-1)


class Shrink(Toy):
    """Moves the embedding a tenth of the way from the anchor: the attack makes slow progress
    and cannot fool it at 4/255."""

    name, title = "shrink", "Shrink"

    def purify(self, z, gradient, on_step=None):
        return self.anchor + 0.1 * (F.normalize(z, dim=-1) - self.anchor)


class Saturate(Toy):
    """Keeps the embedding within 0.002 of the anchor: no perturbation of any size can
    change the logits by more than 0.06 (the clean margin is 0.44)."""

    name, title = "saturate", "Saturate"

    def purify(self, z, gradient, on_step=None):
        delta = F.normalize(z, dim=-1) - self.anchor
        size = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.anchor + 0.002 * torch.tanh(size / 0.002) * delta / size


class SnapBack(Toy):
    """Undefended within 0.2 of the anchor; farther, it answers with the anchor itself, so
    a larger perturbation brings the right answer back."""

    name, title = "snap_back", "SnapBack"

    def purify(self, z, gradient, on_step=None):
        f = F.normalize(z, dim=-1)
        far = (f - self.anchor).norm(dim=-1, keepdim=True) > 0.2
        return torch.where(far, self.anchor.expand_as(f), f)


class Noisy(Toy):
    """A random defence: fresh noise on the embedding at every forward."""

    name, title = "noisy", "Noisy"

    def purify(self, z, gradient, on_step=None):
        return F.normalize(z, dim=-1) + 0.5 * torch.randn_like(z)


class NoisyZeroGradient(Toy):
    """A random defence with a constant-zero gradient: undefended CLIP's embedding, detached,
    plus fresh noise at every forward (its loss wanders with no attack behind it)."""

    name, title = "noisy_zero_grad", "NoisyZeroGrad"

    def purify(self, z, gradient, on_step=None):
        return F.normalize(z.detach() + 0 * z, dim=-1) + 0.05 * torch.randn_like(z)


TOYS = (Identity, ZeroGradient, Shrink, Saturate, SnapBack, Noisy, NoisyZeroGradient)


@pytest.fixture(scope="module")
def toys():
    patch = pytest.MonkeyPatch()
    for toy in TOYS:
        patch.setitem(PURIFIERS, toy.name, toy)
    yield
    patch.undo()


def audit(backbone, photo, defenses, conditions, checks, **options):
    return run_audit(
        Playground(backbone, "single"),
        photo,
        LABELS,
        defenses=defenses,
        conditions=conditions,
        checks=checks,
        **{"steps": 2, **options},
    )


def statuses(result, name: str) -> dict:
    return {(c.condition, c.model): c.status for c in result.checks_named(name)}


def check(result, name: str, condition: str | None, model: str):
    (found,) = [
        c for c in result.checks_named(name) if (c.condition, c.model) == (condition, model)
    ]
    return found


@pytest.fixture(scope="module")
def masked(toys, backbone, cat_photo):
    """Transfer, paper and full against a working, a zero-gradient and a shrinking defence."""
    return audit(
        backbone,
        cat_photo,
        ["identity", "zero_grad", "shrink"],
        ["transfer", "paper", "full"],
        ["loss_progress", "transfer_vs_white_box", "binarization"],
    )


@pytest.fixture(scope="module")
def ladders(toys, backbone, cat_photo):
    """Every eps rung (thorough) for a defence that snaps back and a working one."""
    calls = []
    result = audit(
        backbone,
        cat_photo,
        ["snap_back", "identity"],
        ["full"],
        ["eps_monotone", "binarization", "convergence", "batch_coupling"],
        thorough=True,
        on_progress=lambda *call: calls.append(call),
    )
    return result, calls


def test_loss_progress(masked, toys, backbone, cat_photo):
    assert statuses(masked, "loss_progress") == {
        ("full", UNDEFENDED): "pass",
        ("paper", "identity"): "pass",
        ("full", "identity"): "pass",
        ("paper", "zero_grad"): "fail",  # a zero gradient: PGD never leaves its start
        ("full", "zero_grad"): "fail",
        ("paper", "shrink"): "warn",  # not fooled, still gaining at its last step
        ("full", "shrink"): "warn",
    }
    assert not masked.cell("full", "identity").correct and masked.cell("full", "shrink").correct
    stuck = check(masked, "loss_progress", "full", "zero_grad")
    assert "did nothing" in stuck.explanation
    assert stuck.value["best"] - stuck.value["start"] < 1e-3
    # enough steps for the shrinking defence: the loss levels off, still not fooled
    longer = audit(backbone, cat_photo, ["shrink"], ["full"], ["loss_progress"], steps=8)
    assert statuses(longer, "loss_progress")[("full", "shrink")] == "pass"
    assert longer.cell("full", "shrink").correct


def test_loss_progress_fails_a_random_defense_with_a_zero_gradient(toys, backbone, cat_photo):
    # A review's case: the per-step losses are single draws of a random defence, so their
    # maximum rises above the start by chance; the measured pixel gradient is exactly 0.
    result = audit(
        backbone, cat_photo, ["noisy_zero_grad"], ["full"], ["zero_gradients", "loss_progress"],
        steps=10,
    )  # fmt: skip
    assert statuses(result, "zero_gradients")[("full", "noisy_zero_grad")] == "fail"
    stuck = check(result, "loss_progress", "full", "noisy_zero_grad")
    assert stuck.status == "fail" and "exactly 0" in stuck.explanation


def test_transfer_vs_white_box(masked):
    assert masked.cell("transfer", "zero_grad").correct is False
    assert statuses(masked, "transfer_vs_white_box") == {
        (None, "identity"): "pass",
        (None, "zero_grad"): "fail",
        (None, "shrink"): "pass",
    }
    assert check(masked, "transfer_vs_white_box", None, "zero_grad").value == ["paper", "full"]


def test_binarization(masked, ladders):
    # default: only where the audit's attack did not fool the model
    assert statuses(masked, "binarization") == {
        ("paper", "identity"): "pass",  # fooled already: not re-tested
        ("full", "identity"): "pass",
        ("paper", "zero_grad"): "fail",  # the known adversarial point is missed
        ("full", "zero_grad"): "fail",
        ("paper", "shrink"): "pass",  # a weak defence, but its gradient finds the point
        ("full", "shrink"): "pass",
    }
    assert check(masked, "binarization", "full", "identity").value["found"] is None
    missed = check(masked, "binarization", "full", "zero_grad").value
    assert missed["found"] is False and missed["margin"] < 0 and missed["control_margin"] < 0
    assert check(masked, "binarization", "full", "shrink").value["found"] is True
    # thorough: run even where the audit's attack succeeded
    thorough, _ = ladders
    found = check(thorough, "binarization", "full", "identity")
    assert found.status == "pass" and found.value["found"] is True
    assert found.value["margin"] > 0 > found.value["control_margin"]


def test_convergence(toys, backbone, cat_photo, ladders):
    one_step = audit(backbone, cat_photo, ["identity"], ["full"], ["convergence"], steps=1)
    assert one_step.cell("full", "identity").correct  # 1 step does not fool it...
    failed = check(one_step, "convergence", "full", "identity")
    assert failed.status == "fail"  # ...2 steps do
    assert failed.value == {"steps": 1, "fooled": False, "longer": {"twice the steps": True}}
    # default: the cheapest white-box condition the attack did not fool, rerun with 2x steps
    weak = audit(backbone, cat_photo, ["shrink"], ["paper", "bpda", "full"], ["convergence"])
    assert statuses(weak, "convergence") == {("bpda", "shrink"): "pass"}
    assert check(weak, "convergence", "bpda", "shrink").value["longer"] == {
        "twice the steps": False
    }
    thorough, _ = ladders
    assert check(thorough, "convergence", "full", "identity").value["longer"] == {
        "twice the steps": True,
        "twice the steps from another start": True,
    }
    assert statuses(thorough, "convergence") == {
        ("full", "snap_back"): "pass",
        ("full", "identity"): "pass",
    }


def test_unbounded_for_every_white_box_condition(toys, backbone, cat_photo):
    result = audit(
        backbone,
        cat_photo,
        ["saturate", "identity"],
        ["release", "paper", "bpda", "full"],
        ["unbounded", "eps_sweep"],
    )
    assert statuses(result, "unbounded") == {
        ("release", UNDEFENDED): "pass",
        ("full", UNDEFENDED): "pass",
        ("release", "saturate"): "fail",  # no perturbation can move it far enough
        ("paper", "saturate"): "fail",
        ("bpda", "saturate"): "fail",
        ("full", "saturate"): "fail",
        ("release", "identity"): "pass",
        ("paper", "identity"): "pass",
        ("bpda", "identity"): "pass",
        ("full", "identity"): "pass",
    }
    assert result.settings["checklist"]["ladder"] == pytest.approx([16 / 255, 1.0])
    assert "255/255" in check(result, "unbounded", "paper", "saturate").explanation
    # eps_sweep is unbounded's full-gradient row, under its old name
    sweep = {c.model: (c.status, c.value) for c in result.checks_named("eps_sweep")}
    for model in (UNDEFENDED, "saturate", "identity"):
        row = check(result, "unbounded", "full", model)
        assert sweep[model] == (row.status, row.value)


def test_unbounded_fails_an_attack_that_cannot_move(toys, backbone, cat_photo):
    # A review's case: with a random start, the 255/255 rung starts from an unrelated image,
    # which can fool a model on its own; the rungs start from the photo, so a zero gradient
    # (undefended CLIP's predictions, no gradient) leaves every rung at the photo.
    result = audit(backbone, cat_photo, ["zero_grad"], ["paper", "full"], ["unbounded"])
    assert statuses(result, "unbounded") == {
        ("full", UNDEFENDED): "pass",
        ("paper", "zero_grad"): "fail",
        ("full", "zero_grad"): "fail",
    }


def test_eps_monotone(ladders):
    result, _ = ladders
    assert statuses(result, "eps_monotone") == {
        ("full", UNDEFENDED): "pass",
        ("full", "snap_back"): "fail",  # fooled at 4/255, right again from 8/255 on
        ("full", "identity"): "pass",
    }
    rungs = [8, 16, 32, 64, 128, 255]
    snapped = check(result, "eps_monotone", "full", "snap_back").value
    assert [round(eps * 255) for eps, _, _ in snapped] == [0, 4, *rungs]
    assert [correct for _, correct, _ in snapped] == [True, False] + [True] * 6
    working = check(result, "eps_monotone", "full", "identity").value
    assert [correct for _, correct, _ in working] == [True] + [False] * 7


def test_batch_coupling(toys, backbone, cat_photo, ladders):
    def coupling(settings, degrees=None, **options):
        playground = (
            Playground(backbone, "single")
            if degrees is None
            else playground_with_null_at(backbone, cat_photo, degrees, settings)
        )
        (found,) = run_audit(
            playground,
            cat_photo,
            LABELS,
            conditions=["clean"],
            checks=["batch_coupling"],
            defense_settings={"clipure_cos": settings},
            **options,
        ).checks_named("batch_coupling")
        return found

    coupled = coupling({"batch_coupled": True})
    assert coupled.status == "fail" and coupled.value["relative_change"] > 1e-3
    # The release's mechanism (b): the per-sample CLIPure-Cos, its null prompt 78 degrees from
    # the photo, under the release's batch-coupled step at batch size 2 (float32, "paper"):
    # its output does not depend on the partner, but the photo's gradient is round-off noise
    # (measured: L-inf progress -0.04 with 1 thread, -0.01 with 2; over 12 seeds -0.05 +- 0.08)
    per_sample = coupling({}, 78.0)
    assert per_sample.status == "fail"
    assert per_sample.value["relative_change"] < 1e-5
    assert "does not depend" in per_sample.explanation
    assert "evaluated images in pairs" in per_sample.explanation
    measured = per_sample.value["coupled_gradient"]
    assert measured["partners"] == "16 random images, one pair each"
    assert len(measured["per_pair"]["linf_progress"]) == 16
    assert measured["smallest_norm"] > 0  # noise, not float16's zeros
    # L2 judges the cosine (measured: mean -0.04 on one thread)
    assert coupling({}, 78.0, norm="l2", eps=0.5).status == "fail"
    # A small step (0.1 per step) leaves the coupled gradient guided (measured: 0.92)
    small_step = coupling({"step_size": 0.1}, 78.0)
    assert small_step.status == "pass"
    assert small_step.value["coupled_gradient"]["linf_progress"] > 0.9
    random = audit(backbone, cat_photo, ["noisy"], ["clean"], ["batch_coupling"])
    assert statuses(random, "batch_coupling") == {(None, "noisy"): "warn"}  # draws differ
    # toy defences without the release's batch-coupled option: the output part only
    result, _ = ladders
    assert statuses(result, "batch_coupling") == {
        (None, "snap_back"): "pass",
        (None, "identity"): "pass",
    }
    assert check(result, "batch_coupling", None, "identity").value["coupled_gradient"] is None


def test_batch_coupling_without_a_direction_to_judge():
    def row(norm: float, direction: float | None) -> GradientStats:
        return GradientStats("batch_coupling", "clipure_cos", norm, 0.0, *[direction] * 3)

    def judged(rows):
        return checklist.batch_coupling("clipure_cos", "CLIPure-Cos", 0.0, False, False, rows)

    assert judged([row(0.0, None)] * 2).status == "fail"  # exactly 0: nothing to follow
    assert judged([row(1e-15, None)] * 2).status == "warn"  # the exact gradient is 0
    half_zero = judged([row(0.0, None), row(1e-15, 0.9)])  # a zero pair gains nothing
    assert half_zero.status == "warn"
    assert half_zero.value["coupled_gradient"]["linf_progress"] == pytest.approx(0.45)


def test_thorough_progress_reaches_its_total_through_the_new_stages(ladders):
    result, calls = ladders
    done = [call[0] for call in calls]
    assert done == sorted(done) and {call[1] for call in calls} == {done[-1]}
    assert {"unbounded", "convergence", "binarization", "batch_coupling"} <= {
        call[2] for call in calls
    }
    assert result.settings["checklist"]["thorough"] is True
    assert {"unbounded", "convergence", "binarization", "batch_coupling"} <= set(result.timings_ms)


def test_thorough_must_be_a_bool(backbone, cat_photo):
    with pytest.raises(InputError, match="thorough must be True or False"):
        run_audit(Playground(backbone, "single"), cat_photo, LABELS, thorough="yes")


def test_cli_json_lists_the_new_checks(capsys, tiny_checkpoint):
    args = [str(ASSETS / "chelsea.png"), "--labels", "cat,dog,car"]
    args += ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--steps", "1"]
    code = main(["audit", *args, "--conditions", "transfer,full", "--json", "--quiet"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(NEW_CHECKS) <= set(CHECKS)
    assert set(NEW_CHECKS) <= {c["name"] for c in data["checks"]}
    assert data["settings"]["checklist"]["thorough"] is False
    thorough = ["--conditions", "clean", "--checks", "batch_coupling", "--thorough"]
    code = main(["audit", *args, *thorough, "--json", "--quiet"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["settings"]["checklist"]["thorough"] is True


@pytest.mark.parametrize(
    ("checks", "thorough", "planned"),
    [
        # each attack also makes the strongest-point forwards (2 clean probes, its last
        # iterate judged): docs/attacks.md, "Queries"
        ([c for c in CHECKS if c not in NEW_CHECKS], False, 339),
        # batch_coupling's gradient: 16 pairs at batch size 2 for CLIPure-Cos (453 before)
        (None, False, 469),
        (None, True, 1097),  # 1081 before
        (["unbounded"], False, 377),
        (["unbounded", "eps_sweep"], False, 377),  # eps_sweep reads unbounded's full rows
    ],
)
def test_planned_queries_of_the_default_audit(backbone, cat_photo, checks, thorough, planned):
    """The progress total (model queries, each run at its longest) of the app's default
    audit: all conditions, 10 steps, CLIPure-Cos; read at the first report, then aborted."""

    class Planned(Exception):
        pass

    def stop(done, total, stage):
        raise Planned(total)

    with pytest.raises(Planned) as stopped:
        run_audit(
            Playground(backbone, "single"),
            cat_photo,
            LABELS,
            checks=checks,
            thorough=thorough,
            on_progress=stop,
        )
    assert stopped.value.args[0] == planned


def test_binarization_head_puts_the_known_point_past_its_boundary(backbone):
    clean, known, inner = torch.randn(32), torch.randn(32), torch.randn(4, 32)
    head = BinaryHead(backbone, clean, known, inner)
    margins = head.margin(torch.stack([clean, known, *inner]) * 3.0)  # any norm
    assert margins.tolist() == pytest.approx([-0.5, 0.5, -0.5, -0.5, -0.5, -0.5], abs=1e-5)
    logits = head.logits_from_embeddings(torch.stack([clean, known]))
    assert logits.argmax(dim=-1).tolist() == [0, 1]
