"""The audit's sanity checks (Athalye et al. 2018, Carlini et al. 2019, AutoAttack's checks).

Each check turns measurements into a `Check`: pass, warn or fail, the value it judged, and one
sentence a non-specialist understands. They are pure functions of the measurements, so each
can be tested on constructed cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .gradients import GradientStats

CHECKS: dict[str, str] = {
    "zero_gradients": "Does the gradient that reaches the pixels exist? Exact zeros (or values "
    "so small that an attack's safety margins swamp them) stop gradient attacks "
    "(AutoAttack's check).",
    "gradient_direction": "Does the gradient each threat uses point where the exact gradient "
    "points (cosine, share of equal signs)?",
    "bpda_validity": "BPDA pretends purification does nothing; that is only safe while every "
    "embedding stays closer to the null prompt than atan(step size) (88.09 degrees for 30).",
    "white_box_vs_black_box": "A black-box attack (Square) must not succeed where gradient "
    "attacks, which know more, fail.",
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
    "in a batch of two (the release's steps did).",
    "randomness": "Do the logits change between two runs on the same input? Then attacks "
    "must average gradients over draws (EOT) and robustness needs several draws.",
}
STATUSES = ("pass", "warn", "fail")
# An L2 step divides by the gradient's norm plus a guard of 1e-10 (torchattacks) or 1e-12:
# below this norm the guard dominates and the attack barely moves.
TINY_GRADIENT = 1e-8
MOSTLY_ZERO = 0.1
SIGN_PASS, SIGN_FAIL = 0.75, 0.6  # share of equal signs (what L-inf attacks follow)
COS_PASS, COS_FAIL = 0.5, 0.2  # cosine (what L2 attacks follow)
BPDA_MARGIN_DEG = 1.0
LOGIT_TOLERANCE = 1e-5


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


def zero_gradients(stats: GradientStats, title: str, norm: str) -> Check:
    """Fail on an all-zero gradient, or (L2) one too small to survive the attack's guards."""
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
    if stats.norm < TINY_GRADIENT:
        tiny = (
            f"{title}: the gradient is tiny (size {stats.norm:.1e}); "
            "an L2 attack divides it by its size plus a safety margin of about 1e-10, "
            "so the margin wins and the attack barely moves."
        )
        if norm == "l2":
            return Check(*args, "fail", stats.norm, tiny, **where)
        return Check(
            *args,
            "warn",
            stats.norm,
            f"{title}: the gradient is tiny (size {stats.norm:.1e}); sign-based attacks "
            "still move along it (how well it points is the gradient-direction check), but "
            "attacks that scale by its size would stall.",
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
    return Check(
        *args,
        "pass",
        stats.zero_fraction,
        f"{title}: the gradient reaches the pixels (size {stats.norm:.1e}).",
        **where,
    )


def gradient_direction(stats: GradientStats, title: str, norm: str) -> Check:
    """Judge sign agreement for L-inf attacks (they step along signs), cosine for L2."""
    where = {"condition": stats.condition, "model": stats.model}
    if stats.cos_to_full is None:
        return Check(
            "gradient_direction",
            "fail",
            None,
            f"{title}: the attacker's gradient is exactly 0, so it has no direction at all.",
            **where,
        )
    if norm == "linf":
        value, low, high = stats.sign_agreement_with_full, SIGN_FAIL, SIGN_PASS
        measured = f"{value:.0%} of its signs agree with the exact gradient"
    else:
        value, low, high = stats.cos_to_full, COS_FAIL, COS_PASS
        measured = f"its cosine with the exact gradient is {value:.2f}"
    if stats.cos_to_full < 0:
        return Check(
            "gradient_direction",
            "fail",
            value,
            f"{title}: the attacker's gradient points against the exact one "
            f"(cosine {stats.cos_to_full:.2f}), so its attack pushes the wrong way.",
            **where,
        )
    if value >= high:
        status, verdict = "pass", "so this attack is about as well guided as the exact one"
    elif value < low:
        status, verdict = "fail", "so this attack is steered almost at random"
    else:
        status, verdict = "warn", "so this attack is only partly guided"
    return Check("gradient_direction", status, value, f"{title}: {measured}, {verdict}.", **where)


def angles_to_null(embeddings: torch.Tensor, null_embedding: torch.Tensor) -> list[float]:
    """Angle in degrees between each (B, D) embedding and the (D,) null-prompt embedding."""
    cos = F.normalize(embeddings.double(), dim=-1) @ F.normalize(null_embedding.double(), dim=-1)
    return [math.degrees(math.acos(max(-1.0, min(1.0, float(c))))) for c in cos]


def bpda_validity(model: str, title: str, angles_deg: Sequence[float], step_size: float) -> Check:
    """CLIPure-Cos turns an embedding by atan(step size) per step toward the null prompt.
    Closer than that, the steps overshoot and come back (BPDA's identity is a fair stand-in);
    farther, the trip ends on the far side and the exact gradient flips sign."""
    limit = math.degrees(math.atan(step_size))
    largest = max(angles_deg)
    if largest > limit:
        status = "fail"
        text = (
            f"{title}: an embedding sits {largest:.2f} deg from the null prompt, past the "
            f"{limit:.2f} deg where purification throws it to the far side, so BPDA's gradient "
            "points the wrong way there; trust the full-gradient row instead."
        )
    elif largest > limit - BPDA_MARGIN_DEG:
        status = "warn"
        text = (
            f"{title}: an embedding sits {largest:.2f} deg from the null prompt, within "
            f"{BPDA_MARGIN_DEG:g} deg of the {limit:.2f} deg where BPDA's gradient turns "
            "wrong; compare with the full-gradient row."
        )
    else:
        status = "pass"
        text = (
            f"{title}: every embedding stays within {largest:.2f} deg of the null prompt, below "
            f"the {limit:.2f} deg where BPDA's shortcut would point the wrong way."
        )
    return Check("bpda_validity", status, largest, text, model=model)


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
) -> Check:
    """Fail when Square fooled the model and some white-box gradient attack did not."""
    if not clean_correct:
        return _already_wrong("white_box_vs_black_box", model, title)
    beaten = [c for c, fooled in white_box_fooled.items() if square_fooled and not fooled]
    if beaten:
        return Check(
            "white_box_vs_black_box",
            "fail",
            beaten,
            f"{title}: Square, which sees only the outputs, fooled it where "
            f"{_titles(beaten, condition_titles)} did not, so those attacks' gradients were "
            "misleading.",
            model=model,
        )
    return Check(
        "white_box_vs_black_box",
        "pass",
        beaten,
        f"{title}: the black-box Square attack did no better than the gradient attacks.",
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
