"""Adversarial attacks through torchattacks, with validated settings and seeded randomness."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torchattacks
from torch import nn

from .errors import InputError
from .seeding import seeded

# method -> norms it supports
METHODS: dict[str, tuple[str, ...]] = {
    "pgd": ("linf",),
    "pgd-l2": ("l2",),
    "fgsm": ("linf",),
    "apgd-ce": ("linf", "l2"),
    "apgd-dlr": ("linf", "l2"),
    "apgd-t": ("linf", "l2"),
    "autoattack": ("linf", "l2"),
}
ALIASES = {"apgd": "apgd-ce", "pgdl2": "pgd-l2", "aa": "autoattack"}
TARGETED_METHODS = ("pgd", "pgd-l2", "fgsm")
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4, "autoattack": 4}  # the DLR losses need them
AUTOATTACK_STEPS = 100  # the paper's setting: APGD-CE + APGD-T, 100 iterations each
AUTOATTACK_TARGETS = 9  # APGD-T's targets in AutoAttack: the 9 most likely wrong classes
MAX_STEPS = 1000
MAX_EOT_SAMPLES = 64
MAX_EPS = {"linf": 1.0, "l2": 64.0}
_TORCHATTACKS_NORM = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class AttackConfig:
    """One attack. eps is in [0, 1] pixel units (L-inf 4/255 = 0.0157); alpha likewise.

    alpha=None picks 2.5 * eps / steps (Madry et al.); APGD variants choose their own steps.
    `targeted_label` is a class index (PGD, PGD-L2, FGSM only). `eot_samples` > 1 averages
    gradients over that many forward passes (for stochastic defences).
    """

    method: str = "pgd"
    norm: str = "linf"
    eps: float = 4 / 255
    steps: int = 10
    alpha: float | None = None
    targeted_label: int | None = None
    random_start: bool = True
    eot_samples: int = 1

    def __post_init__(self) -> None:
        method = ALIASES.get(self.method.lower(), self.method.lower())
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "norm", self.norm.lower().replace("-", ""))
        if method not in METHODS:
            raise InputError(f"attack method {self.method!r}: use one of {', '.join(METHODS)}.")
        if self.norm not in METHODS[method]:
            raise InputError(
                f"{method} supports norm {' or '.join(METHODS[method])}, not {self.norm!r}."
            )
        _check_number("eps", self.eps, 0, MAX_EPS[self.norm])
        if self.norm == "linf" and self.eps * 255 < 1 - 1e-4:
            raise InputError(
                f"L-inf eps {self.eps * 255:.2f}/255 is below one 8-bit level: the evaluated "
                "8-bit image could not change. Use eps >= 1/255."
            )
        if self.alpha is not None:
            _check_number("alpha (step size)", self.alpha, 0, MAX_EPS[self.norm])
        _check_count("steps", self.steps, MAX_STEPS)
        _check_count("eot_samples", self.eot_samples, MAX_EOT_SAMPLES)
        if self.targeted_label is not None and method not in TARGETED_METHODS:
            raise InputError(
                f"a target class works with {', '.join(TARGETED_METHODS)}; "
                f"{method} is untargeted (APGD-T picks its own targets)."
            )
        if self.eot_samples > 1 and method == "pgd-l2":
            raise InputError("torchattacks has no EOT variant of PGD-L2; use apgd-ce with norm l2.")

    @property
    def step_size(self) -> float:
        if self.method == "fgsm":
            return self.eps
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    @property
    def effective_steps(self) -> int:
        if self.method == "fgsm":
            return 1
        return self.steps

    def to_dict(self) -> dict:
        # APGD variants choose their own step sizes.
        step_size = None if self.method.startswith(("apgd", "autoattack")) else self.step_size
        return {**asdict(self), "step_size": step_size, "steps": self.effective_steps}


def _check_number(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}.")
    if not low < value <= high:
        raise InputError(f"{name} must be in ({low}, {high}] (pixel units in [0, 1]), got {value}.")


def _check_count(name: str, value: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InputError(f"{name} must be an integer from 1 to {high}, got {value!r}.")


def build_attack(
    model: nn.Module, config: AttackConfig, num_classes: int, seed: int
) -> torchattacks.attack.Attack:
    """The torchattacks object that runs `config` against `model`."""
    if num_classes < MIN_CLASSES.get(config.method, 2):
        raise InputError(
            f"{config.method} needs at least {MIN_CLASSES.get(config.method, 2)} class labels; "
            f"{num_classes} given."
        )
    norm = _TORCHATTACKS_NORM[config.norm]
    eot = config.eot_samples
    method = config.method
    if method in ("pgd", "fgsm"):
        steps, alpha = config.effective_steps, config.step_size
        random_start = config.random_start and method == "pgd"
        if eot > 1:
            attack = torchattacks.EOTPGD(model, config.eps, alpha, steps, eot, random_start)
        elif method == "fgsm":
            attack = torchattacks.FGSM(model, config.eps)
        else:
            attack = torchattacks.PGD(model, config.eps, alpha, steps, random_start)
    elif method == "pgd-l2":
        attack = torchattacks.PGDL2(
            model, config.eps, config.step_size, config.steps, config.random_start
        )
    elif method in ("apgd-ce", "apgd-dlr"):
        loss = method.removeprefix("apgd-")
        attack = torchattacks.APGD(
            model, norm, config.eps, config.steps, n_restarts=1, seed=seed, loss=loss, eot_iter=eot
        )
    elif method == "apgd-t":
        attack = _apgd_t(model, norm, config.eps, config.steps, seed, eot, num_classes)
    else:  # autoattack: the paper's APGD-CE + APGD-T; `steps` sets both (100 in the paper)
        attack = torchattacks.MultiAttack(
            [
                torchattacks.APGD(
                    model,
                    norm,
                    config.eps,
                    config.steps,
                    n_restarts=1,
                    seed=seed,
                    loss="ce",
                    eot_iter=eot,
                ),
                _apgd_t(model, norm, config.eps, config.steps, seed, eot, num_classes),
            ]
        )
    if config.targeted_label is not None:
        attack.set_mode_targeted_by_label(quiet=True)
    return attack


def _apgd_t(
    model: nn.Module, norm: str, eps: float, steps: int, seed: int, eot: int, num_classes: int
) -> torchattacks.APGDT:
    # torchattacks tries num_classes - 1 targets; cap them at AutoAttack's 9.
    targets = min(num_classes - 1, AUTOATTACK_TARGETS)
    return torchattacks.APGDT(
        model, norm, eps, steps, n_restarts=1, seed=seed, eot_iter=eot, n_classes=targets + 1
    )


class _QueryCounter(nn.Module):
    """`model` with a callback after every forward (progress, cancellation)."""

    def __init__(self, model: nn.Module, on_query: Callable[[int], None] | None) -> None:
        super().__init__()
        self.model, self.on_query, self.queries = model, on_query, 0
        # torchattacks restores the wrapper's mode onto the model after the attack: start from
        # the model's own, or a fresh (training) wrapper would switch it to train mode.
        self.train(model.training)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixels)
        self.queries += 1
        if self.on_query is not None:
            self.on_query(self.queries)
        return logits


def craft_attack(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    config: AttackConfig,
    seed: int = 0,
    num_classes: int | None = None,
    on_query: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Adversarial pixels for (B, 3, S, S) `pixels` in [0, 1] with true class `labels` (B,).

    All randomness (random start, APGD restarts, stochastic defences) comes from `seed`; the
    global RNG state is left as it was. `on_query(n)` is called after every model forward
    (progress bars; raising in it aborts the attack).
    """
    counted = _QueryCounter(model, on_query)  # per call: the model may be shared
    with seeded(seed):
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(model(pixels[:1]).shape[-1])
        attack = build_attack(counted, config, num_classes, seed)
        attack.set_device(pixels.device)
        targets = labels
        if config.targeted_label is not None:
            if not 0 <= config.targeted_label < num_classes:
                raise InputError(
                    f"target class index {config.targeted_label} is not a label index."
                )
            targets = torch.full_like(labels, config.targeted_label)
        adversarial = attack(pixels, targets)
    return adversarial.detach()
