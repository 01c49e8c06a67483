"""The robustness audit on the tiny model: its JSON, the facts its checks rest on, progress
and abort, bad input, the CLI; and every check on real audits of toy defences built to break
one thing each (a reversed, zero, scaled or clean-only gradient, a fragile forward,
saturated logits, probabilities, autograd at inference), where it must fail, beside one where
it must pass, with the expected statuses written out (see docs/audit-checks.md).

Random-weight models do not put images ~75 degrees from the null prompt as CLIP does, so the
null prompt is placed at a chosen angle from the photo's embedding (as in test_threats.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from PIL import Image
from torch import nn

from clipure_core import InputError, Playground, Purifier
from clipure_core.audit import CHECKS, CONDITIONS, UNDEFENDED, run_audit
from clipure_core.audit import checks as audit_checks
from clipure_core.audit.dataset import audit_dataset
from clipure_core.audit.gradients import GradientStats, compare, pixel_gradient, pixels_seen
from clipure_core.classifier import ZeroShotClassifier
from clipure_core.cli import main
from clipure_core.evaluate.data import load_image_folder
from clipure_core.prior.model import LatentPrior
from clipure_core.prior.training import small_prior_config
from clipure_core.purifiers import PURIFIERS

from .conftest import ASSETS, LABELS, TINY_MODEL

FAST = {"steps": 2, "square_queries": 4}


def playground_with_null_at(backbone, photo, degrees: float, settings=None) -> Playground:
    """A fresh playground whose CLIPure-Cos (with `settings`) null prompt lies `degrees` from
    the photo."""
    playground = Playground(backbone, "single")
    purifier = playground.purifier("clipure_cos", settings)
    with torch.no_grad():
        u = F.normalize(backbone.encode_image(backbone.prepare(photo).unsqueeze(0))[0], dim=-1)
    v = torch.randn(u.shape, generator=torch.Generator().manual_seed(0))
    v = F.normalize(v - (v @ u) * u, dim=-1)
    angle = math.radians(degrees)
    purifier.null_embedding = math.cos(angle) * u + math.sin(angle) * v
    return playground


@pytest.fixture(scope="module")
def audited(backbone, cat_photo):
    """One audit with every condition and check, and the progress calls it made."""
    calls = []
    playground = playground_with_null_at(backbone, cat_photo, 78.0)
    result = run_audit(
        playground, cat_photo, LABELS, on_progress=lambda *call: calls.append(call), **FAST
    )
    return result, calls


def test_json_has_the_documented_schema(audited):
    result, _ = audited
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(data) == {
        "labels", "true_label", "models", "conditions", "matrix", "gradients", "checks",
        "rounding", "settings", "timings_ms", "notices",
    }  # fmt: skip
    assert data["labels"] == LABELS and data["true_label"] in LABELS
    models = [UNDEFENDED, "clipure_cos"]
    assert [m["name"] for m in data["models"]] == models
    assert [c["name"] for c in data["conditions"]] == list(CONDITIONS)
    assert data["conditions"][3]["title"] == "as released"
    assert all(c["attacker_knew"].endswith(".") for c in data["conditions"])
    assert [(c["condition"], c["model"]) for c in data["matrix"]] == [
        (c, m) for c in CONDITIONS for m in models
    ]
    for cell in data["matrix"]:
        assert set(cell) == {"condition", "model", "prediction", "probability", "correct"}
        assert cell["prediction"] in LABELS and 0 < cell["probability"] <= 1
        assert cell["correct"] == (cell["prediction"] == data["true_label"])
    gradient_conditions = ["transfer", "release", "paper", "bpda", "full"]
    assert [(g["condition"], g["model"]) for g in data["gradients"]] == [
        (c, m) for c in gradient_conditions for m in models
    ]
    for row in data["gradients"]:
        assert set(row) == {
            "condition", "model", "norm", "zero_fraction", "cos_to_full",
            "sign_agreement_with_full", "linf_progress",
        }  # fmt: skip
    for check in data["checks"]:
        assert set(check) == {"name", "status", "value", "explanation", "condition", "model"}
        assert check["name"] in CHECKS and check["status"] in ("pass", "warn", "fail")
        assert check["explanation"].endswith(".")
    assert {c["name"] for c in data["checks"]} == set(CHECKS)
    settings = data["settings"]
    assert settings["eps_255"] == pytest.approx(4) and settings["steps"] == 2
    assert settings["square_queries"] == 4 and settings["gradient_attack"] == "pgd"
    assert settings["conditions"] == list(CONDITIONS) and settings["checks"] == list(CHECKS)
    assert "clipure_cos" in settings["defenses"]
    assert data["timings_ms"]["total"] >= data["timings_ms"]["release"] > 0


def test_release_gradient_is_exactly_zero_and_flagged(audited):
    result, _ = audited
    released = result.gradient("release", "clipure_cos")
    assert released.norm == 0 and released.zero_fraction == 1.0
    assert released.cos_to_full is None and released.sign_agreement_with_full is None
    assert released.linf_progress is None
    # the float16 model itself passes gradients: the purifier's attenuation underflows
    assert result.gradient("release", UNDEFENDED).zero_fraction < 0.01
    flagged = [c for c in result.checks_named("zero_gradients") if c.condition == "release"]
    by_model = {c.model: c for c in flagged}
    assert by_model["clipure_cos"].status == "fail"
    assert "exactly 0" in by_model["clipure_cos"].explanation
    assert by_model[UNDEFENDED].status == "pass"


def test_progress_counts_up_to_its_total_through_every_stage(audited):
    _, calls = audited
    done = [call[0] for call in calls]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert {call[1] for call in calls} == {done[-1]}  # one total, reached at the end
    stages = {call[2] for call in calls}
    assert set(CONDITIONS) - {"clean"} <= stages
    assert {"gradients", "single_step"} <= stages


def test_paper_gradient_is_tiny_yet_moves_a_sign_attack(audited):
    result, _ = audited
    paper, full = result.gradient("paper", "clipure_cos"), result.gradient("full", "clipure_cos")
    assert 0 < paper.norm < 1e-10 * full.norm  # attenuated ~30x per step...
    assert paper.zero_fraction < 0.01  # ...yet no entry underflows to 0: every sign exists
    # Its direction in float32 is partly round-off and varies between machines (cosine
    # 0.17-0.99 seen for this photo), so the direction check is proven on constructed
    # defences below; here: under L-inf it judges the L-inf progress.
    (check,) = [
        c
        for c in result.checks_named("gradient_direction")
        if (c.condition, c.model) == ("paper", "clipure_cos")
    ]
    assert check.value == paper.linf_progress and -1 <= check.value <= 1
    (tiny,) = [
        c
        for c in result.checks_named("zero_gradients")
        if (c.condition, c.model) == ("paper", "clipure_cos")
    ]
    assert tiny.status == "pass"  # sign attacks ignore the size (an L2 attack would stall)


def test_linf_progress_weighs_signs_by_the_exact_gradient():
    full = torch.tensor([10.0, -1.0, 1.0, 0.0])
    # one big entry right, two small ones wrong: half the signs agree, most of the gain is kept
    stats = compare("bpda", "m", torch.tensor([1.0, 1.0, -1.0, 5.0]), full)
    assert stats.sign_agreement_with_full == 0.25
    assert stats.linf_progress == pytest.approx(8 / 12)
    assert compare("bpda", "m", -full, full).linf_progress == -1.0
    assert compare("bpda", "m", torch.zeros(4), full).linf_progress is None


@pytest.mark.parametrize(
    ("steps", "degrees", "expected", "cos_range", "turn"),
    [
        (10, 78.0, "pass", (0.9, 1.0), "0.0 deg"),
        # the issue's case: an odd step count ends on the far side of the null prompt
        (9, 78.0, "fail", (-0.45, -0.41), "88.1 deg"),
        (10, 89.59, "fail", (-1.0, -0.99), "176.2 deg"),  # 1.5 deg past atan(30)
    ],
)
def test_bpda_validity_judges_bpdas_measured_gradient(
    backbone, cat_photo, steps, degrees, expected, cos_range, turn
):
    settings = {"steps": steps}
    result = run_audit(
        playground_with_null_at(backbone, cat_photo, degrees, settings),
        cat_photo,
        LABELS,
        conditions=["bpda", "full"],
        checks=["bpda_validity", "gradient_direction"],
        defense_settings={"clipure_cos": settings},
        **FAST,
    )
    (check,) = result.checks_named("bpda_validity")
    bpda = result.gradient("bpda", "clipure_cos")
    assert check.status == expected
    assert check.value == bpda.linf_progress  # what an L-inf attack follows
    assert cos_range[0] <= bpda.cos_to_full <= cos_range[1] and turn in check.explanation
    (direction,) = [c for c in result.checks_named("gradient_direction") if c.condition == "bpda"]
    assert direction.status == expected


def test_bpda_validity_never_passes_against_the_measured_gradient():
    def bpda(norm: float, cos: float | None, progress: float | None = None) -> GradientStats:
        return GradientStats("bpda", "m", norm, 0.0, cos, None, progress)

    assert [audit_checks.bpda_validity(bpda(1.0, c), "M", 10.0, "l2").status for c in
            (-0.99, -1e-6, 0.1, 0.3, 0.6)] == ["fail", "fail", "fail", "warn", "pass"]  # fmt: skip
    assert audit_checks.bpda_validity(bpda(0.0, None), "M", 10.0, "l2").status == "fail"
    assert audit_checks.bpda_validity(bpda(1.0, None), "M", 10.0, "l2").status == "warn"
    # A review's case: the large entries agree, the many small ones have random signs:
    # cosine 0.908 but L-inf progress 0.076. An L-inf attack follows the signs: fail.
    both = bpda(1.0, 0.908, 0.076)
    assert audit_checks.bpda_validity(both, "M", 10.0, "linf").status == "fail"
    assert audit_checks.bpda_validity(both, "M", 10.0, "l2").status == "pass"


class AnchoredToy(Purifier):
    """A toy defence that knows the cat photo's clean embedding (`anchor`)."""

    def __init__(self, backbone, templates="ensemble", steps=1, step_size=1.0) -> None:
        super().__init__(steps=steps, step_size=step_size)
        with torch.no_grad():
            photo = backbone.prepare(Image.open(ASSETS / "chelsea.png")).unsqueeze(0)
            self.anchor = backbone.encode_image(photo)


def reversed_gradient(z: torch.Tensor) -> torch.Tensor:
    """z forward, -1 x the gradient backward."""
    return 2 * z.detach() - z


class ReversingPurifier(AnchoredToy):
    """Predicts as undefended CLIP; its gradient points the wrong way."""

    name, title = "reversing", "Reversing"

    def purify(self, z, gradient, on_step=None):
        return reversed_gradient(z)


class FragilePurifier(AnchoredToy):
    """Amplifies any move away from the clean photo 1000x (random noise fools it), and
    reverses the gradient (gradient attacks push the wrong way)."""

    name, title = "fragile", "Fragile"

    def purify(self, z, gradient, on_step=None):
        return self.anchor + reversed_gradient(1000 * (z - self.anchor))


class AmplifyingPurifier(AnchoredToy):
    """Amplifies any move away from the clean photo 1000x; its gradient is exact."""

    name, title = "amplifying", "Amplifying"

    def purify(self, z, gradient, on_step=None):
        return self.anchor + 1000 * (z - self.anchor)


class CleanOnlyPurifier(AnchoredToy):
    """Exact gradient at the clean photo (one FGSM step follows it), reversed anywhere else
    (PGD starts at a random point of the ball)."""

    name, title = "clean_only", "Clean only"

    def purify(self, z, gradient, on_step=None):
        at_clean = bool((z - self.anchor).abs().max() <= 1e-6)
        return z if at_clean else reversed_gradient(z)


TOYS = (ReversingPurifier, FragilePurifier, AmplifyingPurifier, CleanOnlyPurifier)


@pytest.fixture(scope="module")
def toys(backbone, cat_photo):
    """One audit of undefended CLIP and the toy defences at 16/255, Square with 4 queries."""
    with pytest.MonkeyPatch.context() as patch:
        for toy in TOYS:
            patch.setitem(PURIFIERS, toy.name, toy)
        return run_audit(
            Playground(backbone, "single"),
            cat_photo,
            LABELS,
            eps=16 / 255,
            steps=5,
            square_queries=4,
            defenses=[toy.name for toy in TOYS],
            conditions=["noise", "bpda", "full", "square"],
            checks=[
                "gradient_direction", "bpda_validity", "white_box_vs_black_box", "noise_control",
                "single_step_vs_iterative", "eps_sweep",
            ],
        )  # fmt: skip


def statuses(result, name: str, condition: str | None = None) -> dict[str, str]:
    """{model: status} of the checks `name` (of `condition`, when given)."""
    return {
        c.model: c.status
        for c in result.checks_named(name)
        if condition is None or c.condition == condition
    }


def test_toy_matrix_is_what_the_toys_are_built_for(toys):
    correct = {(c.condition, c.model): c.correct for c in toys.matrix}
    assert all(correct[("clean", toy.name)] for toy in TOYS)
    assert not correct[("full", UNDEFENDED)]  # 16/255 fools undefended CLIP
    assert correct[("full", "reversing")] and correct[("full", "fragile")]
    assert not correct[("noise", "fragile")] and correct[("noise", UNDEFENDED)]


def test_gradient_direction_fails_a_reversed_gradient(toys):
    # BPDA (identity backwards) against an exact gradient that is reversed, and vice versa
    assert statuses(toys, "gradient_direction", "bpda") == {
        "reversing": "fail", "fragile": "fail", "amplifying": "pass", "clean_only": "pass",
    }  # fmt: skip
    assert toys.gradient("bpda", "reversing").linf_progress == pytest.approx(-1.0)


def test_bpda_validity_fails_a_reversed_gradient(toys):
    assert statuses(toys, "bpda_validity") == {
        "reversing": "fail", "fragile": "fail", "amplifying": "pass", "clean_only": "pass",
    }  # fmt: skip


def test_square_beating_white_box_fails_and_a_small_budget_warns(toys):
    assert statuses(toys, "white_box_vs_black_box") == {
        UNDEFENDED: "warn",  # Square (4 queries) did not fool it: weak evidence
        "reversing": "warn",
        "fragile": "fail",  # Square fooled it, the reversed full gradient did not
        "amplifying": "pass",  # both fooled it
        "clean_only": "warn",
    }
    (fragile,) = [c for c in toys.checks_named("white_box_vs_black_box") if c.model == "fragile"]
    assert fragile.value == {"beaten": ["full"], "square_queries": 4}  # BPDA fooled it
    assert "4 queries" in fragile.explanation


def test_square_failing_is_evidence_from_1000_queries():
    # a real audit with 1000 Square queries takes ~45 s on a loaded CPU: the rule, on its own
    titles = {name: c.title for name, c in CONDITIONS.items()}
    found = [
        audit_checks.white_box_vs_black_box("m", "M", True, False, {"full": False}, titles, n)
        for n in (999, 1000, 5000)
    ]
    assert [c.status for c in found] == ["warn", "pass", "pass"]
    assert "999 queries" in found[0].explanation and "weak evidence" in found[0].explanation


def test_noise_beating_a_gradient_attack_fails(toys):
    assert statuses(toys, "noise_control") == {
        UNDEFENDED: "pass", "reversing": "pass", "fragile": "fail", "amplifying": "warn",
        "clean_only": "pass",
    }  # fmt: skip


def test_one_step_beating_many_steps_fails(toys):
    assert statuses(toys, "single_step_vs_iterative") == {
        UNDEFENDED: "pass", "reversing": "pass", "fragile": "pass", "amplifying": "pass",
        "clean_only": "fail",
    }  # fmt: skip


def test_eps_sweep_reports_the_eps_that_fooled(toys):
    # The default ladder is 4x the audit's eps (64/255) and the cap (255/255), 2 PGD steps
    # each from the photo itself (no random start). clean_only's gradient is exact at the photo,
    # so its first step works: fooled at 64/255. At the cap two steps of 1.25 push every pixel
    # to 0 or 1, an image far from the photo that fools even the toys whose gradient points the
    # wrong way (reversing, fragile): so every model here passes. The must-fail cases (a model
    # no perturbation fools, a zero gradient) are in tests/test_audit_checklist.py
    # (`unbounded`, whose full rows this check reads).
    assert statuses(toys, "eps_sweep") == {
        UNDEFENDED: "pass", "reversing": "pass", "fragile": "pass", "amplifying": "pass",
        "clean_only": "pass",
    }  # fmt: skip
    sweep = {c.model: c.value for c in toys.checks_named("eps_sweep")}
    assert sweep[UNDEFENDED] == pytest.approx(16 / 255)  # fooled at the audit's own eps
    assert sweep["clean_only"] == pytest.approx(64 / 255)
    assert sweep["reversing"] == sweep["fragile"] == 1.0
    assert toys.settings["eps_sweep"] == pytest.approx([64 / 255, 1.0])


class DetachedPurifier(Purifier):
    """A toy defence whose gradient is constant zero (the graph is kept, multiplied by 0)."""

    name, title = "detached", "Detached"

    def __init__(self, backbone, templates="ensemble", steps=1, step_size=1.0) -> None:
        super().__init__(steps=steps, step_size=step_size)

    def purify(self, z, gradient, on_step=None):
        return F.normalize(z.detach() + 0 * z, dim=-1)


class ScalingPurifier(Purifier):
    """Predicts as undefended CLIP; its gradient is `scale` x undefended CLIP's."""

    name, title = "scaling", "Scaling"

    def __init__(self, backbone, templates="ensemble", steps=0, step_size=1.0, scale=1.0):
        super().__init__(steps=steps, step_size=step_size)
        self.scale = scale

    def purify(self, z, gradient, on_step=None):
        return z.detach() + self.scale * (z - z.detach())


class NoisyPurifier(Purifier):
    """A toy random defence: each forward adds fresh noise to the embedding."""

    name, title = "noisy", "Noisy"

    def __init__(self, backbone, templates="ensemble", steps=1, step_size=1.0) -> None:
        super().__init__(steps=steps, step_size=step_size)

    def purify(self, z, gradient, on_step=None):
        return F.normalize(z, dim=-1) + 0.5 * torch.randn_like(z)


class AutogradPurifier(Purifier):
    """Takes one autograd step on the embedding while it predicts (a dynamic defence)."""

    name, title = "autograd", "Autograd"

    def __init__(self, backbone, templates="ensemble", steps=0, step_size=0.1) -> None:
        super().__init__(steps=steps, step_size=step_size)

    def purify(self, z, gradient, on_step=None):
        with torch.enable_grad():
            point = z.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(point.norm(), point)
        return z - self.step_size * grad


class ScaledPlayground(Playground):
    """Its classifiers' logits are multiplied by `factor` (saturated), or turned into
    probabilities (`softmax`)."""

    def __init__(self, backbone, factor: float = 1.0, softmax: bool = False) -> None:
        super().__init__(backbone, "single")
        self.factor, self.softmax = factor, softmax

    def classifier(self, labels):
        playground = self

        class Scaled(ZeroShotClassifier):
            def logits_from_embeddings(self, z):
                logits = playground.factor * super().logits_from_embeddings(z)
                return logits.softmax(dim=-1) if playground.softmax else logits

        return Scaled(self.backbone, labels, self.templates)


def test_zero_gradient_model_fails_the_gradient_checks(backbone, cat_photo, monkeypatch):
    monkeypatch.setitem(PURIFIERS, "detached", DetachedPurifier)
    result = run_audit(
        Playground(backbone, "single"),
        cat_photo,
        LABELS,
        defenses=["detached"],
        conditions=["paper", "bpda", "full"],
        checks=["zero_gradients", "gradient_direction"],
        **FAST,
    )
    found = {(c.name, c.condition, c.model): c.status for c in result.checks}
    assert found[("zero_gradients", "full", "detached")] == "fail"
    assert found[("zero_gradients", "paper", "detached")] == "fail"
    assert found[("zero_gradients", "bpda", "detached")] == "pass"  # BPDA's identity bypasses it
    assert found[("zero_gradients", "full", UNDEFENDED)] == "pass"
    assert result.gradient("full", "detached").zero_fraction == 1.0
    assert found[("gradient_direction", "bpda", "detached")] == "warn"  # nothing to compare
    assert found[("gradient_direction", "paper", "detached")] == "fail"


def test_saturated_logits_give_an_exactly_zero_gradient(backbone, cat_photo):
    # x 1e4: softmax is exactly one-hot in float32, so cross-entropy's gradient is exactly 0
    result = run_audit(
        ScaledPlayground(backbone, factor=1e4),
        cat_photo,
        LABELS,
        defenses="",
        conditions=["full"],
        checks=["zero_gradients", "softmax_output"],
        **FAST,
    )
    assert result.gradient("full", UNDEFENDED).norm == 0
    assert statuses(result, "zero_gradients") == {UNDEFENDED: "fail"}
    assert statuses(result, "softmax_output") == {UNDEFENDED: "pass"}  # logits, if saturated


@pytest.mark.parametrize(
    ("norm", "eps", "scale", "expected"),
    [
        ("l2", 0.5, 1e-13, "fail"),  # ||g|| ~1e-13: PGD-L2 moves ~0.1 % of each step
        ("l2", 0.5, 1e-3, "pass"),
        ("linf", 4 / 255, 1e-13, "pass"),  # sign(g) ignores the size
    ],
)
def test_zero_gradients_follows_the_attacks_guards(
    backbone, cat_photo, monkeypatch, norm, eps, scale, expected
):
    monkeypatch.setitem(PURIFIERS, "scaling", ScalingPurifier)
    result = run_audit(
        Playground(backbone, "single"),
        cat_photo,
        LABELS,
        norm=norm,
        eps=eps,
        defenses=["scaling"],
        defense_settings={"scaling": {"scale": scale}},
        conditions=["full"],
        checks=["zero_gradients"],
        **FAST,
    )
    assert statuses(result, "zero_gradients") == {UNDEFENDED: "pass", "scaling": expected}


@pytest.mark.parametrize(
    ("size", "moved", "expected"),
    [(1e-12, 0.0099, "fail"), (5e-10, 0.833, "warn"), (2e-9, 0.952, "pass")],
)
def test_pgd_l2_moves_as_its_guard_says_and_the_check_agrees(size, moved, expected):
    class Linear(nn.Module):  # logits ~(0, 0): the CE gradient has norm 0.5 x sqrt(48) x w
        def forward(self, x):
            w = size / (0.5 * math.sqrt(48))
            return torch.stack([w * x.flatten(1).sum(1), torch.zeros(len(x))], dim=1)

    pixels = torch.full((1, 3, 4, 4), 0.5)
    label = torch.tensor([1])
    attack = torchattacks.PGDL2(Linear(), eps=1.0, alpha=0.1, steps=1, random_start=False)
    step = float((attack(pixels, label) - pixels).norm()) / 0.1
    assert step == pytest.approx(moved, rel=1e-2)
    stats = compare("full", "m", pixel_gradient(Linear(), pixels, label, seed=0), torch.ones(48))
    assert audit_checks.zero_gradients(stats, "M", "l2").status == expected
    assert audit_checks.zero_gradients(stats, "M", "linf").status == "pass"


def test_zero_gradient_of_a_quantising_model_is_measured_as_zero():
    class Quantising(nn.Module):
        def forward(self, x):
            return (x * 255).round().flatten(1)[:, :3] / 255

    pixels = torch.rand(1, 3, 4, 4)
    grad = pixel_gradient(Quantising(), pixels, torch.tensor([0]), seed=0)
    stats = compare("full", "q", grad, grad)
    assert stats.zero_fraction == 1.0
    assert audit_checks.zero_gradients(stats, "full", "linf").status == "fail"


def test_probabilities_instead_of_logits_fail(backbone, cat_photo, audited):
    result = run_audit(
        ScaledPlayground(backbone, softmax=True),
        cat_photo,
        LABELS,
        conditions=["clean"],
        checks=["softmax_output"],
    )
    assert statuses(result, "softmax_output") == {UNDEFENDED: "fail", "clipure_cos": "fail"}
    assert "probabilities" in result.checks[0].explanation
    assert statuses(audited[0], "softmax_output") == {UNDEFENDED: "pass", "clipure_cos": "pass"}


def test_half_precision_probabilities_fail_too():
    # A review's case: a model that applies softmax in float16 (or bfloat16) returns rows that
    # sum to 1 only within ~1e-3; a 1e-5 tolerance let them pass as logits.
    torch.manual_seed(0)
    logits = torch.randn(4, 1000) * 5
    for dtype in (torch.float16, torch.bfloat16):
        probabilities = logits.to(dtype).softmax(dim=-1).float()
        assert (probabilities.double().sum(dim=-1) - 1).abs().max() > 1e-5  # not exactly 1
        assert audit_checks.softmax_output("m", "M", probabilities).status == "fail"
    assert audit_checks.softmax_output("m", "M", logits).status == "pass"
    # a logit row that is non-negative but sums to 25 (CLIP's scale) is not probabilities
    assert audit_checks.softmax_output("m", "M", torch.full((1, 5), 5.0)).status == "pass"


def test_inference_time_optimisation_is_flagged(backbone, cat_photo, audited, monkeypatch):
    flagged = {c.model: c for c in audited[0].checks_named("inference_time_optimisation")}
    assert flagged[UNDEFENDED].status == "pass"
    cos = flagged["clipure_cos"]  # closed-form steps: no autograd call, yet it optimises
    assert cos.status == "warn" and "optimises at inference time" in cos.explanation
    assert cos.value == {"autograd_calls": 0, "purification_steps": 10}
    monkeypatch.setitem(PURIFIERS, "autograd", AutogradPurifier)
    prior = LatentPrior(small_prior_config(32, depth=1, heads=2, dim_head=16))  # untrained
    result = run_audit(
        Playground(backbone, "single"),
        cat_photo,
        LABELS,
        defenses=["clipure_cos", "autograd", "clipure_diff"],
        defense_settings={
            "clipure_cos": {"steps": 0},
            "clipure_diff": {"prior": prior, "steps": 3},
        },
        conditions=["clean"],
        checks=["inference_time_optimisation"],
    )
    found = {c.model: c for c in result.checks}
    assert {m: c.status for m, c in found.items()} == {
        UNDEFENDED: "pass",
        "clipure_cos": "pass",
        "autograd": "fail",
        "clipure_diff": "fail",
    }  # fail: no full-gradient row in this audit
    assert found["autograd"].value == {"autograd_calls": 1, "purification_steps": 0}
    assert found["clipure_diff"].value == {"autograd_calls": 3, "purification_steps": 3}
    assert "CLIPure-Diff optimises at inference time" in found["clipure_diff"].explanation


def test_random_model_fails_the_randomness_check_without_eot(backbone, cat_photo, monkeypatch):
    monkeypatch.setitem(PURIFIERS, "noisy", NoisyPurifier)
    playground = Playground(backbone, "single")
    options = {"defenses": ["noisy"], "conditions": ["clean"], "checks": ["randomness"]}
    single = run_audit(playground, cat_photo, LABELS, **options)
    status = {c.model: c.status for c in single.checks}
    assert status == {UNDEFENDED: "pass", "noisy": "fail"}
    averaged = run_audit(playground, cat_photo, LABELS, eot=3, **options)
    assert {c.model: c.status for c in averaged.checks}["noisy"] == "warn"
    assert averaged.settings["eot_models"] == ["noisy"]


def test_raising_in_on_progress_aborts_and_the_next_audit_works(backbone, cat_photo):
    class Stop(Exception):
        pass

    seen = []

    def stop_soon(done, total, stage):
        seen.append(done)
        if len(seen) == 4:
            raise Stop

    playground = Playground(backbone, "single")
    options = {"conditions": ["transfer", "full"], "checks": [], **FAST}
    with pytest.raises(Stop):
        run_audit(playground, cat_photo, LABELS, on_progress=stop_soon, **options)
    assert len(seen) == 4
    result = run_audit(playground, cat_photo, LABELS, **options)
    assert result.conditions == ["clean", "transfer", "full"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conditions": ["clean", "whitebox"]}, "unknown audit condition 'whitebox'"),
        ({"checks": "zero_gradients,vibes"}, "unknown audit check 'vibes'"),
        ({"norm": "l3"}, "norm must be 'linf' or 'l2'"),
        ({"eps": 0.0}, "eps must be in"),
        ({"steps": 0}, "steps must be an integer"),
        ({"seed": -1}, "seed must be an integer"),
        ({"square_queries": 0}, "steps \\(queries\\) must be an integer"),
        ({"eot": 0}, "eot must be an integer"),
        ({"true_label": "zebra"}, "label 'zebra' is not in the label list"),
        ({"true_label": 7}, "true label index 7"),
        ({"defenses": ["clipure_cos", "magic"]}, "unknown defence 'magic'"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(backbone, cat_photo, options, message):
    with pytest.raises(InputError, match=message):
        run_audit(Playground(backbone, "single"), cat_photo, LABELS, **options)


def test_pixels_the_crop_discards_are_not_counted_as_zero_gradient(backbone, cat_photo):
    # A newcomer's case: at native resolution the 451 x 300 photo's left and right borders are
    # cropped away before the model, so their gradient is 0 under every defence; counted,
    # they made zero_gradients warn "27 % of the pixel gradient is exactly 0".
    seen = pixels_seen(backbone.to_model_size, torch.zeros(1, 3, 300, 451))
    assert seen[..., 150, :].any() and not seen[..., :, 0].any() and not seen[..., :, -1].any()
    assert pixels_seen(backbone.to_model_size, torch.zeros(1, 3, 32, 32)).all()
    result = run_audit(
        Playground(backbone, "single"),
        cat_photo,
        LABELS,
        conditions=["full"],
        checks=["zero_gradients"],
        attack_resolution="native",
        **FAST,
    )
    assert result.settings["attack_image_size"] == {"width": 451, "height": 300}
    assert [g.zero_fraction for g in result.gradients] == [0.0, 0.0]
    assert {c.status for c in result.checks_named("zero_gradients")} == {"pass"}


def test_one_label_is_refused_only_where_an_attack_would_run(backbone, cat_photo):
    with pytest.raises(InputError, match=r"^pgd needs at least 2 class labels; 1 given"):
        run_audit(Playground(backbone, "single"), cat_photo, "cat", conditions=["clean", "full"])
    clean_only = run_audit(Playground(backbone, "single"), cat_photo, "cat", conditions=["clean"])
    assert [cell.prediction for cell in clean_only.matrix] == ["cat", "cat"]


def test_eot_with_l2_is_refused_before_the_attacks(backbone, cat_photo, monkeypatch):
    monkeypatch.setitem(PURIFIERS, "noisy", NoisyPurifier)
    calls = []
    with pytest.raises(InputError, match="no EOT variant of PGD-L2"):
        run_audit(
            Playground(backbone, "single"),
            cat_photo,
            LABELS,
            norm="l2",
            eps=0.5,
            eot=4,
            defenses=["noisy"],
            on_progress=lambda *call: calls.append(call),
        )
    assert calls == []


def cli(capsys, *args):
    code = main(["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_the_matrix_and_the_checks(capsys, tiny_checkpoint):
    weights = ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint)]
    code, out, err = cli(
        capsys,
        str(ASSETS / "chelsea.png"),
        "--labels",
        "cat,dog,car",
        *weights,
        "--steps",
        "1",
        "--conditions",
        "release,full",
        "--checks",
        "zero_gradients",
    )
    assert code == 0, err
    assert "as released" in out and "full gradient" in out and "checks:" in out
    assert "zero_gradients" in out and "audit" in err  # the progress bar
    code, out, _ = cli(
        capsys,
        str(ASSETS / "chelsea.png"),
        "--labels",
        "cat,dog,car",
        *weights,
        "--steps",
        "1",
        "--conditions",
        "noise",
        "--json",
        "--quiet",
    )
    data = json.loads(out)
    assert code == 0 and [c["name"] for c in data["conditions"]] == ["clean", "noise"]


def test_cli_audits_a_data_set_and_counts(capsys, tiny_checkpoint, tmp_path):
    photo = Image.open(ASSETS / "chelsea.png").convert("RGB").resize((40, 40))
    for folder in ("cat", "dog"):
        (tmp_path / folder).mkdir()
        for i in range(2):
            photo.rotate(90 * i).save(tmp_path / folder / f"{i}.png")
    code, out, err = cli(
        capsys,
        "--data",
        str(tmp_path),
        "--model",
        TINY_MODEL,
        "--pretrained",
        str(tiny_checkpoint),
        "--num-images",
        "3",
        "--steps",
        "1",
        "--conditions",
        "transfer",
        "--checks",
        "randomness",  # noise_control without 'noise' is refused (tests/test_refusals.py)
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["n_images"] == 3 and len(data["images"]) == 3
    for row in data["accuracy"]:
        correct = sum(
            cell["correct"]
            for image in data["images"]
            for cell in image["matrix"]
            if (cell["condition"], cell["model"]) == (row["condition"], row["model"])
        )
        assert row["correct"] == correct and row["accuracy"] == pytest.approx(correct / 3)
    assert {row["name"] for row in data["checks"]} == {"randomness"}
    assert all(sum(row["counts"].values()) == 3 for row in data["checks"])
    code, out, _ = cli(
        capsys,
        "--data",
        str(tmp_path),
        "--model",
        TINY_MODEL,
        "--pretrained",
        str(tiny_checkpoint),
        "--num-images",
        "2",
        "--conditions",
        "clean",
        "--checks",
        "randomness",
    )
    assert code == 0 and "2 images; accuracy per condition" in out
    assert "randomness [undefended]: 2 / 0 / 0" in out


def test_data_set_images_are_judged_against_their_folder(backbone, tmp_path):
    photo = Image.open(ASSETS / "chelsea.png").convert("RGB")
    for folder in ("zebra", "cat"):
        (tmp_path / folder).mkdir()
        photo.save(tmp_path / folder / "a.png")
    report = audit_dataset(
        Playground(backbone, "single"),
        load_image_folder(tmp_path),
        conditions=["clean"],
        checks=[],
    )
    assert [r.true_label for r in report.results] == ["cat", "zebra"]
    assert report.ids == ["cat/a.png", "zebra/a.png"]
    # the same photo cannot be right under both labels
    assert sum(r.cell("clean", UNDEFENDED).correct for r in report.results) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give either IMAGE"),
        ([str(ASSETS / "chelsea.png")], "--labels is required"),
        (["--data", "x", str(ASSETS / "chelsea.png")], "give either IMAGE"),
        (["--data", str(ASSETS), "--labels", "a,b"], "drop --labels"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message(capsys, args, message):
    code, _, err = cli(capsys, *args)
    assert code == 2 and message in err


def test_audit_without_defenses_covers_undefended_clip_only(backbone, cat_photo):
    result = run_audit(
        Playground(backbone, "single"),
        cat_photo,
        LABELS,
        defenses="",
        conditions="noise,full",
        checks="noise_control,zero_gradients",
        **FAST,
    )
    assert list(result.models) == [UNDEFENDED]
    assert [(c.condition, c.model) for c in result.matrix] == [
        ("clean", UNDEFENDED), ("noise", UNDEFENDED), ("full", UNDEFENDED),
    ]  # fmt: skip
    assert [(c.name, c.model) for c in result.checks] == [
        ("zero_gradients", UNDEFENDED), ("noise_control", UNDEFENDED),
    ]  # fmt: skip
