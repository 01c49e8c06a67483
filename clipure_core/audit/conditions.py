"""The audit's conditions: what the attacker knew, and which attack produced the image."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..attacks import AttackConfig
from ..errors import InputError
from .checks import CHECKS

UNDEFENDED = "undefended"


@dataclass(frozen=True)
class Condition:
    """One row of the threat matrix.

    `threat` is the threat model whose module the attack queries (None: no attack);
    `gradient` says whether that attack follows the pixel gradient; `shared` means one image
    is crafted for all models (clean, noise, transfer)."""

    name: str
    title: str
    attacker_knew: str
    threat: str | None
    gradient: bool
    shared: bool


CONDITIONS: dict[str, Condition] = {
    condition.name: condition
    for condition in (
        Condition("clean", "clean", "Nothing: the photo is shown as it is.", None, False, True),
        Condition(
            "noise",
            "random noise",
            "Nothing: a random perturbation of the attack's size, the control every attack "
            "must beat.",
            None,
            False,
            True,
        ),
        Condition(
            "transfer",
            "transfer",
            "Everything about the undefended CLIP and nothing about the defence: the image that "
            "fools undefended CLIP is shown to every model.",
            "transfer",
            True,
            True,
        ),
        Condition(
            "release",
            "as released",
            "The defended model as the paper's released code attacked it: half-precision "
            "weights and the purification's inner gradient held constant.",
            "release",
            True,
            False,
        ),
        Condition(
            "paper",
            "paper",
            "The defended model in full precision, with the purification's inner gradient "
            "held constant.",
            "paper",
            True,
            False,
        ),
        Condition(
            "bpda",
            "BPDA",
            "The defended model, with purification treated as doing nothing when the gradient "
            "is computed (BPDA).",
            "bpda",
            True,
            False,
        ),
        Condition(
            "full",
            "full gradient",
            "Everything: the exact gradient through every purification step.",
            "full",
            True,
            False,
        ),
        Condition(
            "square",
            "Square (black box)",
            "Only the model's output probabilities: Square tries random squares of pixels, "
            "without gradients.",
            "full",
            False,
            False,
        ),
    )
}
GRADIENT_CONDITIONS = tuple(name for name, c in CONDITIONS.items() if c.gradient)
WHITE_BOX_CONDITIONS = ("release", "paper", "bpda", "full")


def pick_names(names: Iterable[str] | str | None, known: Sequence[str], what: str) -> list[str]:
    """The names asked for (a list or comma-separated text; None: all), in `known`'s order;
    an unknown name is an InputError naming `what` they are."""
    if names is None:
        return list(known)
    if isinstance(names, str):
        names = names.split(",")
    wanted = {name.strip() for name in names if name.strip()}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise InputError(f"unknown audit {what} {unknown[0]!r}: use some of {', '.join(known)}.")
    return [name for name in known if name in wanted]


def check_conditions(names: Iterable[str] | str | None) -> list[str]:
    """The requested conditions in the matrix's order ('clean' is always run: every
    comparison starts from it)."""
    chosen = pick_names(names, list(CONDITIONS), "condition")
    return [name for name in CONDITIONS if name in chosen or name == "clean"]


# check -> the conditions it compares: each group needs one of its conditions in the audit
CHECK_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "bpda_validity": (("bpda",),),
    "white_box_vs_black_box": (("square",), WHITE_BOX_CONDITIONS),
    "noise_control": (("noise",), GRADIENT_CONDITIONS),
    "single_step_vs_iterative": (("full",),),
}


def unfed_checks(checks: Sequence[str], conditions: Sequence[str]) -> dict[str, str]:
    """{check: what it still needs} for the checks whose conditions are not among these."""
    unfed = {}
    for check in checks:
        for group in CHECK_NEEDS.get(check, ()):
            if not set(group) & set(conditions):
                unfed[check] = f"'{group[0]}'" if len(group) == 1 else f"one of {', '.join(group)}"
                break
    return unfed


def check_checks_runnable(
    checks: Iterable[str] | str | None, conditions: Iterable[str] | str | None
) -> None:
    """Checks asked for by name (None: all, each where its conditions run) that the chosen
    conditions cannot feed are refused, not dropped."""
    if checks is None:
        return
    unfed = unfed_checks(pick_names(checks, list(CHECKS), "check"), check_conditions(conditions))
    for check, need in unfed.items():
        raise InputError(
            f"audit check {check!r} compares conditions that are not run: add {need} "
            "to the conditions, or leave the check out."
        )


def attack_key(condition: str, model: str) -> tuple[str, str]:
    """Which attack produced the image (condition, model) is evaluated on. Conditions that
    attack the same module share one: undefended CLIP under transfer, paper, BPDA and full is
    one white-box attack; noise and transfer images are crafted once for all models."""
    spec = CONDITIONS[condition]
    if condition == "noise":
        return ("noise", UNDEFENDED)
    if condition == "transfer" or (
        model == UNDEFENDED and spec.gradient and condition != "release"
    ):
        return ("full", UNDEFENDED)
    return (condition, model)


def gradient_attack(norm: str, eps: float, steps: int, eot: int = 1) -> AttackConfig:
    """The iterative gradient attack of every gradient condition: PGD (L-inf) or PGD-L2."""
    method = "pgd" if norm == "linf" else "pgd-l2"
    return AttackConfig(method, norm, eps, steps, eot_samples=eot)


def single_step_attack(norm: str, eps: float, eot: int = 1) -> AttackConfig:
    """FGSM (L-inf), or its L2 form: one PGD-L2 step of size eps from the clean image."""
    if norm == "linf":
        return AttackConfig("fgsm", "linf", eps, 1, eot_samples=eot)
    return AttackConfig("pgd-l2", "l2", eps, 1, alpha=eps, random_start=False)


def noise_attack(norm: str, eps: float) -> AttackConfig:
    return AttackConfig("noise", norm, eps, 1)


def square_attack(norm: str, eps: float, queries: int) -> AttackConfig:
    return AttackConfig("square", norm, eps, queries)
