"""The audit's sanity checks (Athalye et al. 2018, Carlini et al. 2019, AutoAttack's checks).

Each check turns measurements into a `Check`: pass, warn or fail, the value it judged, and one
sentence a non-specialist understands. They are pure functions of the measurements, so each
can be tested on constructed cases.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torchattacks

from .gradients import GradientStats

CHECKS: dict[str, str] = {
    "zero_gradients": "Does the gradient that reaches the pixels exist? Exact zeros stop sign "
    "attacks (L-inf); a gradient smaller than an L2 attack's own division guard stalls it "
    "(AutoAttack's check).",
    "gradient_direction": "Does the gradient each threat uses move its attack as the exact "
    "gradient would (L-inf: the share of the best loss gain its signs deliver; L2: cosine)?",
    "bpda_validity": "BPDA pretends purification does nothing; is its gradient, as measured, "
    "still pointing where the exact gradient points?",
    "white_box_vs_black_box": "A black-box attack (Square) must not succeed where gradient "
    "attacks, which know more, fail; Square failing too is weak evidence below 1000 queries.",
    "noise_control": "Random noise must not succeed where a gradient attack fails.",
    "single_step_vs_iterative": "One gradient step (FGSM) must not succeed where many steps "
    "(PGD) fail.",
    "eps_sweep": "A large enough perturbation must fool every model (~100 % success); if none "
    "does, the attack is broken, not the model robust.",
    "loss_progress": "The attack must raise its loss from step 0 (else it did nothing), and "
    "a model it did not fool must not still be losing ground at its last steps.",
    "convergence": "Twice the steps (and, thorough, another random start) must not fool a "
    "model the audit's attack did not.",
    "unbounded": "Raising eps until the attack wins, for every white-box condition: if none "
    "wins, the attack is broken, not the model robust ('eps_sweep' is its full-gradient row).",
    "eps_monotone": "Along the same growing eps, accuracy and the true class's probability "
    "must never go back up.",
    "transfer_vs_white_box": "An image made on undefended CLIP must not fool a defence that "
    "white-box attacks on the defence itself could not fool.",
    "binarization": "With a known adversarial example placed inside the ball, the attack must "
    "find it (Zimmermann et al. 2022); missing it means the attack is too weak.",
    "batch_coupling": "The defence's output for the photo must not depend on the other image "
    "in a batch of two, and its gradient under the release's batch-coupled step at batch size "
    "2 must still guide an attack (the release evaluated pairs: there it was noise).",
    "randomness": "Do the logits change between two runs on the same input? Then attacks "
    "must average gradients over draws (EOT) and robustness needs several draws.",
    "softmax_output": "Does the model hand the attacks probabilities instead of logits? "
    "Cross-entropy on probabilities saturates and weakens them (AutoAttack's check).",
    "inference_time_optimisation": "Does the defence optimise while it predicts? Then only "
    "attacks that follow those steps measure it (AutoAttack's dynamic-defence flag).",
}
STATUSES = ("pass", "warn", "fail")
# Attacks that scale by the gradient's size divide by it plus a guard: torchattacks' PGD-L2
# (the audit's L2 attack) by ||g|| + eps_for_division (APGD, which the audit does not run, by
# ||g|| + 1e-12). A gradient of norm n moves a step n / (n + guard) of its length: below the
# guard less than half (fail), below 10 guards less than 91 % (warn). Sign attacks (L-inf)
# ignore the size: only exactly-zero entries (float32 underflow) stop them, as sign(0) = 0.
PGD_L2_GUARD: float = inspect.signature(torchattacks.PGDL2).parameters["eps_for_division"].default
GUARD_WARN_FACTOR = 10
MOSTLY_ZERO = 0.1
# gradient_direction / bpda_validity: the share of the exact gradient's progress delivered
# (L-inf: linf_progress; L2 and BPDA: cosine)
PROGRESS_PASS, PROGRESS_FAIL = 0.5, 0.2
STRONG_SQUARE_QUERIES = 1000  # AutoAttack runs Square with 5000
LOGIT_TOLERANCE = 1e-5
PROBABILITY_SUM_TOLERANCE = 1e-2  # half-precision softmax rows sum to 1 within ~1e-3


@dataclass(frozen=True)
class Check:
    """One verdict. `condition` / `model` name what was checked (None: not specific)."""

    name: str
    status: str
    value: object
    explanation: str
    condition: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if self.name not in CHECKS or self.status not in STATUSES:
            raise ValueError(f"bad check {self.name!r} / status {self.status!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def zero_gradients(
    stats: GradientStats, title: str, norm: str, guard: float = PGD_L2_GUARD
) -> Check:
    """Fail on an all-zero gradient; under L2 also on one below the attack's division `guard`
    (warn below 10 guards). Under L-inf the size does not matter (the attack takes signs);
    warn when over 10 % of the entries are exactly 0 (their sign is 0: those pixels stay)."""
    args = ("zero_gradients",)
    where = {"condition": stats.condition, "model": stats.model}
    if stats.norm == 0:
        return Check(
            *args,
            "fail",
            stats.zero_fraction,
            f"{title}: the gradient that reaches the pixels is exactly 0, so the attack could "
            "not move.",
            **where,
        )
    if norm == "l2" and stats.norm < GUARD_WARN_FACTOR * guard:
        share = stats.norm / (stats.norm + guard)
        status = "fail" if stats.norm < guard else "warn"
        return Check(
            *args,
            status,
            stats.norm,
            f"{title}: the gradient is tiny (size {stats.norm:.1e}); the L2 attack divides it "
            f"by its size plus a guard of {guard:.0e}, so each step is only {share:.0%} as "
            "long as it should be.",
            **where,
        )
    if stats.zero_fraction > MOSTLY_ZERO:
        return Check(
            *args,
            "warn",
            stats.zero_fraction,
            f"{title}: {stats.zero_fraction:.0%} of the pixel gradient is exactly 0, so "
            "the attack can change only part of the image.",
            **where,
        )
    size = " (the L-inf attack follows its signs, whatever its size)" if norm == "linf" else ""
    return Check(
        *args,
        "pass",
        stats.zero_fraction,
        f"{title}: the gradient reaches the pixels (size {stats.norm:.1e}){size}.",
        **where,
    )


def gradient_direction(stats: GradientStats, title: str, norm: str) -> Check:
    """Judge how much of the exact gradient's progress a step along this gradient makes:
    L-inf `linf_progress` (a step along its signs), L2 the cosine (a step along it)."""
    where = {"condition": stats.condition, "model": stats.model}
    if stats.cos_to_full is None or stats.linf_progress is None:
        return Check(
            "gradient_direction",
            "fail" if stats.norm == 0 else "warn",
            None,
            f"{title}: the attacker's gradient is exactly 0, so it has no direction at all."
            if stats.norm == 0
            else f"{title}: the exact gradient is 0, so there is no direction to compare with.",
            **where,
        )
    if norm == "linf":
        value = stats.linf_progress
        measured = (
            f"a step along the signs of its gradient gains {value:.0%} of what a step along "
            "the exact gradient's signs gains"
        )
    else:
        value = stats.cos_to_full
        measured = f"its gradient's cosine with the exact gradient is {value:.2f}"
    status, verdict = direction_grade(value)
    return Check("gradient_direction", status, value, f"{title}: {measured}, {verdict}.", **where)


def direction_grade(value: float) -> tuple[str, str]:
    """Status and verdict for a gradient delivering `value` of the exact one's progress."""
    if value < 0:
        return "fail", "so its attack pushes the wrong way"
    if value < PROGRESS_FAIL:
        return "fail", "so its attack is steered almost at random"
    if value < PROGRESS_PASS:
        return "warn", "so its attack is only partly guided"
    return "pass", "so its attack is well guided"


def angles_between(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Angles in degrees between the rows of (B, D) `a` and `b` ((B, D) or (D,))."""
    cos = (F.normalize(a.double(), dim=-1) * F.normalize(b.double(), dim=-1)).sum(dim=-1)
    return [math.degrees(math.acos(max(-1.0, min(1.0, float(c))))) for c in cos]


def bpda_validity(stats: GradientStats, title: str, turn_deg: float, norm: str) -> Check:
    """Judge BPDA by its measured gradient (`stats`: the bpda row) with the measure the attack
    follows (as `gradient_direction`): L-inf progress for L-inf, cosine for L2. Fail below 0.2
    (negative: it points the wrong way), warn below 0.5. `turn_deg`, how far purification turns
    the clean embedding, is reported as context: it is what BPDA ignores (CLIPure-Cos with 30
    per step turns 88 deg per step)."""
    where = {"condition": stats.condition, "model": stats.model}
    turn = f"purification turns the clean embedding by {turn_deg:.1f} deg, which BPDA ignores"
    if stats.norm == 0:
        return Check(
            "bpda_validity",
            "fail",
            None,
            f"{title}: BPDA's gradient is exactly 0, so it cannot guide an attack ({turn}).",
            **where,
        )
    if norm == "linf":
        value, measure = stats.linf_progress, "L-inf progress"
    else:
        value, measure = stats.cos_to_full, "cosine"
    if value is None:
        return Check(
            "bpda_validity",
            "warn",
            None,
            f"{title}: the exact gradient is 0, so BPDA cannot be compared with it ({turn}).",
            **where,
        )
    if value < 0:
        status, verdict = "fail", "it points the wrong way: trust the full-gradient row instead"
    elif value < PROGRESS_FAIL:
        status, verdict = "fail", "it is nearly unrelated to it: trust the full-gradient row"
    elif value < PROGRESS_PASS:
        status, verdict = "warn", "it only partly agrees: compare with the full-gradient row"
    else:
        status, verdict = "pass", "BPDA is a fair stand-in here"
    return Check(
        "bpda_validity",
        status,
        value,
        f"{title}: BPDA's gradient has {measure} {value:.2f} with the exact one, so {verdict} "
        f"({turn}).",
        **where,
    )


def _already_wrong(name: str, model: str, title: str) -> Check:
    return Check(
        name,
        "warn",
        None,
        f"{title} already misclassifies the clean photo, so the attacks cannot be compared on it.",
        model=model,
    )


def _titles(conditions: Sequence[str], titles: Mapping[str, str]) -> str:
    return ", ".join(titles[c] for c in conditions)


def white_box_vs_black_box(
    model: str,
    title: str,
    clean_correct: bool,
    square_fooled: bool,
    white_box_fooled: Mapping[str, bool],
    condition_titles: Mapping[str, str],
    square_queries: int,
) -> Check:
    """Fail when Square fooled the model and some white-box gradient attack did not; warn
    when Square failed with fewer than 1000 queries (its failure says little)."""
    if not clean_correct:
        return _already_wrong("white_box_vs_black_box", model, title)
    beaten = [c for c, fooled in white_box_fooled.items() if square_fooled and not fooled]
    value = {"beaten": beaten, "square_queries": square_queries}
    budget = f"Square had {square_queries} queries"
    if beaten:
        return Check(
            "white_box_vs_black_box",
            "fail",
            value,
            f"{title}: Square, which sees only the outputs, fooled it where "
            f"{_titles(beaten, condition_titles)} did not, so those attacks' gradients were "
            f"misleading ({budget}).",
            model=model,
        )
    if not square_fooled and square_queries < STRONG_SQUARE_QUERIES:
        return Check(
            "white_box_vs_black_box",
            "warn",
            value,
            f"{title}: Square did no better than the gradient attacks, but {budget} (fewer "
            f"than {STRONG_SQUARE_QUERIES}; AutoAttack uses 5000), so that is weak evidence.",
            model=model,
        )
    return Check(
        "white_box_vs_black_box",
        "pass",
        value,
        f"{title}: the black-box Square attack did no better than the gradient attacks ({budget}).",
        model=model,
    )


def noise_control(
    model: str,
    title: str,
    clean_correct: bool,
    noise_fooled: bool,
    gradient_fooled: Mapping[str, bool],
    condition_titles: Mapping[str, str],
) -> Check:
    """Fail when random noise fooled the model and some gradient attack did not."""
    if not clean_correct:
        return _already_wrong("noise_control", model, title)
    beaten = [c for c, fooled in gradient_fooled.items() if noise_fooled and not fooled]
    if beaten:
        return Check(
            "noise_control",
            "fail",
            beaten,
            f"{title}: random noise fooled it where {_titles(beaten, condition_titles)} did "
            "not, so those attacks were weaker than chance.",
            model=model,
        )
    if noise_fooled:
        return Check(
            "noise_control",
            "warn",
            beaten,
            f"{title}: random noise alone already fools it (every gradient attack did too).",
            model=model,
        )
    return Check(
        "noise_control",
        "pass",
        beaten,
        f"{title}: random noise of the same size did not fool it.",
        model=model,
    )


def single_step_vs_iterative(
    model: str, title: str, clean_correct: bool, single_fooled: bool, iterative_fooled: bool
) -> Check:
    """Fail when one step of the exact gradient fooled the model and PGD did not."""
    if not clean_correct:
        return _already_wrong("single_step_vs_iterative", model, title)
    value = {"single_step_fooled": single_fooled, "iterative_fooled": iterative_fooled}
    if single_fooled and not iterative_fooled:
        return Check(
            "single_step_vs_iterative",
            "fail",
            value,
            f"{title}: a single gradient step fooled it but many steps did not, so the "
            "iterative attack is being misled.",
            model=model,
        )
    return Check(
        "single_step_vs_iterative",
        "pass",
        value,
        f"{title}: many gradient steps did at least as well as one.",
        model=model,
    )


def eps_sweep(
    model: str, title: str, clean_correct: bool, results: Sequence[tuple[float, bool]], norm: str
) -> Check:
    """`results`: (eps, fooled) for growing eps, the last one large. Pass once one fools it."""
    if not clean_correct:
        return Check(
            "eps_sweep",
            "pass",
            0.0,
            f"{title} already misclassifies the clean photo (no perturbation needed).",
            model=model,
        )
    fooled_at = next((eps for eps, fooled in results if fooled), None)
    largest = _eps_text(results[-1][0], norm)
    if fooled_at is None:
        return Check(
            "eps_sweep",
            "fail",
            None,
            f"{title}: even a perturbation of {largest} did not fool it; an attack that large "
            "should always win, so the attack is broken here, not the model robust.",
            model=model,
        )
    return Check(
        "eps_sweep",
        "pass",
        fooled_at,
        f"{title}: the full-gradient attack fools it once the perturbation may reach "
        f"{_eps_text(fooled_at, norm)}.",
        model=model,
    )


def _eps_text(eps: float, norm: str) -> str:
    return f"{eps * 255:.3g}/255 per pixel" if norm == "linf" else f"{eps:.3g} (L2)"


def randomness(model: str, title: str, max_difference: float, eot: int) -> Check:
    """Fail for a random model attacked with single draws (EOT 1); warn when EOT was used."""
    if max_difference <= LOGIT_TOLERANCE:
        return Check(
            "randomness",
            "pass",
            max_difference,
            f"{title} gives the same answer every time on the same photo.",
            model=model,
        )
    if eot <= 1:
        return Check(
            "randomness",
            "fail",
            max_difference,
            f"{title} is random (its scores change between runs), and this audit's gradients "
            "used one draw each: rerun with EOT (e.g. 20) before trusting its robustness.",
            model=model,
        )
    return Check(
        "randomness",
        "warn",
        max_difference,
        f"{title} is random (its scores change between runs); the attacks averaged {eot} "
        "draws per gradient, and one run's prediction is only one draw.",
        model=model,
    )


def softmax_output(model: str, title: str, outputs: torch.Tensor) -> Check:
    """Fail when the (B, C) scores the attacks see are probabilities: every entry >= 0 and
    every row summing to 1 within `PROBABILITY_SUM_TOLERANCE` (probabilities computed in
    float16 or bfloat16 sum to 1 only within ~1e-3). `value`: the largest row sum."""
    total = float(outputs.double().sum(dim=-1).max())
    probabilities = bool(
        (outputs >= -LOGIT_TOLERANCE).all()
        and ((outputs.double().sum(dim=-1) - 1).abs() <= PROBABILITY_SUM_TOLERANCE).all()
    )
    if probabilities:
        return Check(
            "softmax_output",
            "fail",
            total,
            f"{title} returns probabilities (non-negative, summing to 1) where attacks expect "
            "logits: their cross-entropy saturates and the attacks stall; attack its logits.",
            model=model,
        )
    return Check(
        "softmax_output",
        "pass",
        total,
        f"{title} returns logits, not probabilities (its scores sum to {total:.3g}).",
        model=model,
    )


def inference_time_optimisation(
    model: str, title: str, autograd_calls: int, purification_steps: int, attacked_through: bool
) -> Check:
    """Flag a defence that optimises while it predicts: autograd called during one no-grad
    prediction (measured), or a purifier taking `purification_steps` > 0 gradient steps on
    the embedding (CLIPure-Cos takes them in closed form, invisible to autograd). Warn when
    `attacked_through` (the audit's full-gradient attack followed every step), else fail."""
    value = {"autograd_calls": autograd_calls, "purification_steps": purification_steps}
    if autograd_calls == 0 and purification_steps == 0:
        return Check(
            "inference_time_optimisation",
            "pass",
            value,
            f"{title} computes its answer in one pass, without optimising anything.",
            model=model,
        )
    what = []
    if purification_steps:
        what.append(f"takes {purification_steps} gradient steps on the photo's embedding")
    if autograd_calls:
        what.append(f"calls autograd {autograd_calls} times")
    done = " and ".join(what)
    if attacked_through:
        return Check(
            "inference_time_optimisation",
            "warn",
            value,
            f"{title} optimises at inference time: before answering it {done}. Attacks that "
            "do not follow those steps overstate its robustness; the full-gradient row follows "
            "every step, so trust that one.",
            model=model,
        )
    return Check(
        "inference_time_optimisation",
        "fail",
        value,
        f"{title} optimises at inference time: before answering it {done}, and no attack in "
        "this audit followed those steps; add the full-gradient condition.",
        model=model,
    )
