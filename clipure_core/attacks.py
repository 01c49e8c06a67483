"""Adversarial attacks through torchattacks, with validated settings and seeded randomness."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torchattacks
from torch import nn

from .attack_classes import (
    BestIterateEOTPGD,
    BestIterateFGSM,
    BestIteratePGD,
    BestIteratePGDL2,
    JudgedFAB,
    ReleaseAPGD,
    ReleaseAPGDT,
    StrongestAPGD,
    StrongestAPGDT,
    StrongestSquare,
    UniformNoise,
)
from .errors import InputError
from .seeding import seeded
from .strongest import PROBE_FORWARDS, SETTLE_DRAWS, StrongestRunner, Witness

# method -> norms it supports
METHODS: dict[str, tuple[str, ...]] = {
    "pgd": ("linf",),
    "pgd-l2": ("l2",),
    "fgsm": ("linf",),
    "apgd-ce": ("linf", "l2"),
    "apgd-dlr": ("linf", "l2"),
    "apgd-t": ("linf", "l2"),
    "autoattack": ("linf", "l2"),
    "autoattack-standard": ("linf", "l2"),
    "square": ("linf", "l2"),
    "noise": ("linf", "l2"),
}
ALIASES = {
    "apgd": "apgd-ce",
    "pgdl2": "pgd-l2",
    "aa": "autoattack",
    "aa-standard": "autoattack-standard",
}
TARGETED_METHODS = ("pgd", "pgd-l2", "fgsm")
GRADIENT_FREE_METHODS = ("square", "noise")
APGD_METHODS = ("apgd-ce", "apgd-dlr", "apgd-t")
# the DLR losses need 3 classes, their targeted form 4
SQUARE_L2_METHODS = ("square", "autoattack-standard")  # L2 Square: square images only
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4, "autoattack": 4, "autoattack-standard": 4}
AUTOATTACK_STEPS = 100  # the paper's setting: APGD-CE + APGD-T, 100 iterations each
AUTOATTACK_TARGETS = 9  # APGD-T's (and FAB-T's) targets in AutoAttack: 9 likeliest wrong classes
RELEASE_APGD_RESTARTS = 5  # AutoAttack's APGD-CE default, kept by the release's version='custom'
SQUARE_QUERIES = 5000  # Square's query budget in AutoAttack's standard version
MAX_STEPS = 1000
MAX_SQUARE_QUERIES = 100_000
MAX_RESTARTS = 20
MAX_EOT_SAMPLES = 64
MAX_EPS = {"linf": 1.0, "l2": 64.0}
_TORCHATTACKS_NORM = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class AttackConfig:
    """One attack. eps is in [0, 1] pixel units (L-inf 4/255 = 0.0157); alpha likewise.

    alpha=None picks 2.5 * eps / steps (Madry et al.); APGD variants choose their own steps.
    `targeted_label` is a class index (PGD, PGD-L2, FGSM only). `eot_samples` > 1 averages
    gradients over that many forward passes (for stochastic defences). `restarts` applies to
    the APGD variants. For "square", `steps` is the query budget; "noise" is one random draw
    (uniform in the L-inf ball, on the L2 sphere): the control every attack must beat.
    """

    method: str = "pgd"
    norm: str = "linf"
    eps: float = 4 / 255
    steps: int = 10
    alpha: float | None = None
    targeted_label: int | None = None
    random_start: bool = True
    eot_samples: int = 1
    restarts: int = 1

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
        max_steps = MAX_SQUARE_QUERIES if method == "square" else MAX_STEPS
        _check_count("steps" if method != "square" else "steps (queries)", self.steps, max_steps)
        _check_count("eot_samples", self.eot_samples, MAX_EOT_SAMPLES)
        _check_count("restarts", self.restarts, MAX_RESTARTS)
        if self.restarts > 1 and method not in APGD_METHODS:
            raise InputError(
                f"restarts apply to {', '.join(APGD_METHODS)}; {method} fixes its own."
            )
        if self.eot_samples > 1 and method in (*GRADIENT_FREE_METHODS, "autoattack-standard"):
            raise InputError(
                f"{method} does not average gradients over samples (no EOT); "
                "use autoattack, apgd-ce or pgd with eot_samples."
            )
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
        if self.method in ("fgsm", "noise"):
            return 1
        return self.steps

    def estimated_queries(self, num_classes: int, stochastic: bool = False) -> int:
        """Model forwards this attack makes on one image at most (progress bars, GPU leases):
        its own, plus those of `strongest`: the probe for randomness, judging points the
        attack never evaluated (PGD's last iterate, FAB's and Square's results) and, against
        a `stochastic` model, judging each run's best point on fresh forwards."""
        targets = min(num_classes - 1, AUTOATTACK_TARGETS)
        apgd = (self.steps + 1) * self.eot_samples
        apgd_t = (apgd + 1) * targets  # each target is chosen on one clean forward
        if self.method == "noise":
            return 1
        if self.method == "square":
            own, runs = self.steps + 2, 1  # its first point, its queries, the judged best
        elif self.method == "apgd-t":
            own, runs = apgd_t * self.restarts, targets * self.restarts
        elif self.method in APGD_METHODS:
            own, runs = apgd * self.restarts, self.restarts
        elif self.method == "autoattack":
            own, runs = apgd * RELEASE_APGD_RESTARTS + apgd_t, RELEASE_APGD_RESTARTS + targets
        elif self.method == "autoattack-standard":
            fab = (self.steps + 2) * targets * 3  # forward + Jacobian passes per FAB step
            own, runs = apgd + apgd_t + fab + 1 + SQUARE_QUERIES + 2, targets + 3
        else:  # PGD-style: every step, then the last iterate
            own, runs = (self.effective_steps + 1) * self.eot_samples, 1
        return own + PROBE_FORWARDS + (SETTLE_DRAWS * runs if stochastic else 0)

    def to_dict(self) -> dict:
        # APGD variants and the gradient-free attacks choose their own step sizes.
        own_step = self.method.startswith(("apgd", "autoattack")) or self.method in (
            GRADIENT_FREE_METHODS
        )
        step_size = None if own_step else self.step_size
        return {**asdict(self), "step_size": step_size, "steps": self.effective_steps}


def _check_number(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}.")
    if not low < value <= high:
        raise InputError(f"{name} must be in ({low}, {high}] (pixel units in [0, 1]), got {value}.")


def _check_count(name: str, value: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InputError(f"{name} must be an integer from 1 to {high}, got {value!r}.")


def check_classes(config: AttackConfig, num_classes: int, source: str = "labels") -> None:
    """Refuse `config` against a classifier of `num_classes` classes (InputError, with the way
    out): too few classes for its loss, or a target class that is not one of them. `source`
    names where the classes come from in the way out ("labels", or a data set's classes).
    Callers run it before any model work; `build_attack` runs it too."""
    needed = MIN_CLASSES.get(config.method, 2)
    if num_classes < needed:
        fewer = [m for m in METHODS if MIN_CLASSES.get(m, 2) <= num_classes]
        way_out = f"; or use an attack that needs fewer ({', '.join(fewer)})" if fewer else ""
        raise InputError(
            f"{config.method} needs at least {needed} class labels; {num_classes} given. "
            f"Give {needed} or more {source}{way_out}."
        )
    target = config.targeted_label
    if target is not None and not 0 <= target < num_classes:
        raise InputError(
            f"target class index {target} is not a label index (0 to {num_classes - 1})."
        )


def check_pixel_shape(config: AttackConfig, height: int, width: int) -> None:
    """Refuse torchattacks' L2 Square (`square`, and inside `autoattack-standard`) on images
    that are not square: its initial tiling and its square updates assume height == width and
    crash otherwise. Only `native` attack resolution gives such images."""
    if config.norm == "l2" and config.method in SQUARE_L2_METHODS and height != width:
        raise InputError(
            f"{config.method} at L2 runs torchattacks' L2 Square, which needs square images; "
            f"these are {width}x{height}. Use --attack-resolution model (square model-size "
            "pixels), --norm linf, or another attack."
        )


def build_attack(
    model: nn.Module,
    config: AttackConfig,
    num_classes: int,
    seed: int,
    release: bool = False,
    stochastic: bool | None = None,
) -> torchattacks.attack.Attack:
    """The attack that runs `config` against `model`: per image it returns the strongest
    point it saw (see `strongest`), never its last iterate or the clean image by default.

    Composites (`autoattack`, `autoattack-standard`) run their attacks in order, each on the
    images not yet fooled. `release=True` (the release protocol's stages, `apgd-ce` and
    `apgd-t` only) keeps torchattacks' return rule: the clean image wherever the attack's own
    forwards never saw the image misclassified. `stochastic`: whether the model's forwards
    differ on one input, if the caller has measured it (None: probed on every batch).
    """
    check_classes(config, num_classes)
    norm = _TORCHATTACKS_NORM[config.norm]
    targets = min(num_classes - 1, AUTOATTACK_TARGETS)
    if release:
        return _release_attack(model, config, targets, seed)
    if config.method == "noise":  # one random draw: nothing to choose from
        return UniformNoise(model, norm, config.eps)
    witness = Witness(model, stochastic)
    attacks = _attacks(witness, config, norm, targets, seed)
    runner = StrongestRunner(witness, attacks)
    if config.targeted_label is not None:
        runner.set_mode_targeted_by_label(quiet=True)  # passed on to its attacks
    return runner


def _attacks(
    witness: Witness, config: AttackConfig, norm: str, targets: int, seed: int
) -> list[torchattacks.attack.Attack]:
    """The attacks `config` runs in order against `witness` (one but for composites)."""
    eot, method, eps, steps = config.eot_samples, config.method, config.eps, config.steps

    def apgd(loss: str, restarts: int) -> torchattacks.APGD:
        return StrongestAPGD(
            witness, norm, eps, steps, n_restarts=restarts, seed=seed, loss=loss, eot_iter=eot
        )

    def apgd_t() -> torchattacks.APGDT:
        # torchattacks tries n_classes - 1 targets: AutoAttack's 9 at most.
        return StrongestAPGDT(
            witness,
            norm,
            eps,
            steps,
            n_restarts=config.restarts,
            seed=seed,
            eot_iter=eot,
            n_classes=targets + 1,
        )

    def square(queries: int) -> torchattacks.Square:
        return StrongestSquare(witness, norm, eps, n_queries=queries, n_restarts=1, seed=seed)

    if method in ("pgd", "fgsm"):
        alpha = config.step_size
        random_start = config.random_start and method == "pgd"
        if eot > 1:
            attacks = [
                BestIterateEOTPGD(witness, eps, alpha, config.effective_steps, eot, random_start)
            ]
        elif method == "fgsm":
            attacks = [BestIterateFGSM(witness, eps)]
        else:
            attacks = [BestIteratePGD(witness, eps, alpha, steps, random_start)]
    elif method == "pgd-l2":
        attacks = [BestIteratePGDL2(witness, eps, config.step_size, steps, config.random_start)]
    elif method in ("apgd-ce", "apgd-dlr"):
        attacks = [apgd(method.removeprefix("apgd-"), config.restarts)]
    elif method == "apgd-t":
        attacks = [apgd_t()]
    elif method == "square":
        attacks = [square(steps)]
    elif method == "autoattack":  # the release's version='custom': APGD-CE x5 + APGD-T
        attacks = [apgd("ce", RELEASE_APGD_RESTARTS), apgd_t()]
    else:  # autoattack-standard: AutoAttack's standard version
        fab = JudgedFAB(
            witness,
            norm,
            eps,
            steps,
            n_restarts=1,
            multi_targeted=True,
            n_classes=targets + 1,
            seed=seed,
        )
        attacks = [apgd("ce", 1), apgd_t(), fab, square(SQUARE_QUERIES)]
    return attacks


def _release_attack(
    model: nn.Module, config: AttackConfig, targets: int, seed: int
) -> torchattacks.attack.Attack:
    """A stage of the release protocol's AutoAttack, as torchattacks runs it."""
    norm = _TORCHATTACKS_NORM[config.norm]
    common = {"n_restarts": config.restarts, "seed": seed, "eot_iter": config.eot_samples}
    if config.method == "apgd-ce":
        return ReleaseAPGD(model, norm, config.eps, config.steps, loss="ce", **common)
    if config.method == "apgd-t":
        return ReleaseAPGDT(model, norm, config.eps, config.steps, n_classes=targets + 1, **common)
    raise ValueError(f"the release protocol runs apgd-ce and apgd-t, not {config.method}.")


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
    release: bool = False,
    stochastic: bool | None = None,
) -> torch.Tensor:
    """Adversarial pixels for (B, 3, S, S) `pixels` in [0, 1] with true class `labels` (B,):
    per image the strongest point the attack saw (`release`: see `build_attack`).

    All randomness (random start, APGD restarts, stochastic defences) comes from `seed`; the
    global RNG state is left as it was. `on_query(n)` is called after every model forward
    (progress bars; raising in it aborts the attack). `stochastic`: see `build_attack`.
    """
    check_pixel_shape(config, *pixels.shape[-2:])
    counted = _QueryCounter(model, on_query)  # per call: the model may be shared
    with seeded(seed):
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(model(pixels[:1]).shape[-1])
        attack = build_attack(counted, config, num_classes, seed, release, stochastic)
        attack.set_device(pixels.device)
        targets = labels
        if config.targeted_label is not None:
            targets = torch.full_like(labels, config.targeted_label)
        adversarial = attack(pixels, targets)
    return adversarial.detach()
