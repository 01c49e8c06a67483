"""The settings of one evaluation run, validated, in the units the command line uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..attacks import AUTOATTACK_STEPS, AttackConfig
from ..errors import InputError
from ..threats import check_threat

UNDEFENDED = "undefended"
MODEL_ALIASES = {"none": UNDEFENDED, "clip": UNDEFENDED}
DEFAULT_STEPS = {"pgd": 10, "pgd-l2": 10, "fgsm": 1}  # APGD variants and AutoAttack: 100


@dataclass(frozen=True)
class EvalConfig:
    """One run. L-inf `eps`/`alpha` are in /255 units, L2 in [0, 1] pixel units; `steps`
    None means 100 for APGD and AutoAttack (the paper), 10 for PGD. `n` None: every image.
    `models` lists 'undefended' and/or defence names. `max_batches` stops this invocation
    after that many batches per process (the run is then resumed by the next one)."""

    data: str
    out: Path
    data_root: str | None = None
    class_names: str | None = None
    val_labels: str | None = None
    model: str = "ViT-B-32"
    pretrained: str = "openai"
    device: str | None = None
    precision: str | None = None
    templates: str = "ensemble"
    n: int | None = 1000
    seed: int = 0
    batch_size: int = 64
    attack: str = "autoattack"
    norm: str = "linf"
    eps: tuple[float, ...] = (4.0,)
    steps: int | None = None
    alpha: float | None = None
    eot: int = 1
    threats: tuple[str, ...] = ("paper",)
    models: tuple[str, ...] = (UNDEFENDED, "clipure_cos")
    defense_settings: Mapping[str, Mapping] = field(default_factory=dict)
    max_batches: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        models = tuple(MODEL_ALIASES.get(name, name) for name in self.models)
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "eps", tuple(float(eps) for eps in self.eps))
        _integer("batch size", self.batch_size, 1)
        _integer("seed", self.seed, 0)
        if self.n is not None:
            _integer("n", self.n, 1)
        if self.max_batches is not None:
            _integer("max batches", self.max_batches, 1)
        _unique_non_empty("models (--defense)", models)
        _unique_non_empty("threat models", self.threats)
        _unique_non_empty("eps values", self.eps)
        for threat in self.threats:
            check_threat(threat)
        for eps in self.eps:
            self.attack_config(eps)  # validates method, norm, eps, steps, alpha, eot

    @property
    def defenses(self) -> tuple[str, ...]:
        return tuple(name for name in self.models if name != UNDEFENDED)

    @property
    def resolved_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        method = AttackConfig(self.attack, self.norm).method
        return DEFAULT_STEPS.get(method, AUTOATTACK_STEPS)

    @property
    def eps_scale(self) -> float:
        """Multiply a command-line eps by this to get [0, 1] pixel units."""
        return 1 / 255 if self.norm.lower() == "linf" else 1.0

    @property
    def eps_units(self) -> str:
        return "/255" if self.norm.lower() == "linf" else "pixels in [0, 1]"

    def attack_config(self, eps: float) -> AttackConfig:
        """The engine's attack for one eps (given in command-line units)."""
        scale = self.eps_scale
        alpha = None if self.alpha is None else self.alpha * scale
        return AttackConfig(
            self.attack, self.norm, eps * scale, self.resolved_steps, alpha, eot_samples=self.eot
        )

    def attack_settings(self) -> dict:
        """The attack part of the run's settings (eps as given, and in pixel units)."""
        config = self.attack_config(self.eps[0])
        return {
            "method": config.method,
            "norm": config.norm,
            "eps": list(self.eps),
            "eps_units": self.eps_units,
            "eps_pixels": [eps * self.eps_scale for eps in self.eps],
            "steps": config.effective_steps,
            "alpha": self.alpha,
            "eot_samples": self.eot,
            "random_start": config.random_start,
        }


def _integer(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _unique_non_empty(name: str, values: tuple) -> None:
    if not values:
        raise InputError(f"{name}: give at least one.")
    if len(set(values)) != len(values):
        raise InputError(f"{name}: {', '.join(map(str, values))} has duplicates.")
