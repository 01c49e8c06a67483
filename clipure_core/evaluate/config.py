"""The settings of one evaluation run, validated, in the units the command line uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..attacks import AUTOATTACK_STEPS, SQUARE_QUERIES, AttackConfig, check_classes
from ..columns import Column, home_ref, parse_column
from ..defaults import DEFAULT_MODEL, DEFAULT_WEIGHTS
from ..errors import InputError
from ..loading import effective_pretrained
from ..prompts import resolve_templates
from ..release import check_release_precision
from ..resolution import check_attack_resolution
from ..threats import check_threat
from .protocols import (
    ADAPTIVE_DRAWS,
    ADAPTIVE_EOT,
    ADAPTIVE_EXTRA_ATTACKS,
    EOT_METHODS,
    EXTRA_ATTACK_THREAT,
    NOISE_STEPS,
    release_attack_resolution,
    release_templates,
    resolve,
)

UNDEFENDED = "undefended"
MODEL_ALIASES = {"none": UNDEFENDED, "clip": UNDEFENDED}
DEFAULT_STEPS = {"pgd": 10, "pgd-l2": 10, "fgsm": 1}  # APGD variants and AutoAttack: 100
MAX_ATTACK_SEEDS = 16
MAX_EVAL_DRAWS = 64


@dataclass(frozen=True)
class Condition:
    """One attack setting of a run: eps in command-line units, a threat model, the attack
    (None: the run's attack for that eps) and which of the run's attack seeds it uses."""

    eps: float
    threat: str
    attack: AttackConfig | None = None
    seed_index: int = 0

    @property
    def attack_name(self) -> str | None:
        return None if self.attack is None else self.attack.method


@dataclass(frozen=True)
class EvalConfig:
    """One run. L-inf `eps`/`alpha` are in /255 units, L2 in [0, 1] pixel units; `steps`
    None means 100 for APGD and AutoAttack (the paper), 10 for PGD. `n` None: every image.
    `models` lists 'undefended' and/or defence names. `max_batches` stops this invocation
    after that many batches per process (the run is then resumed by the next one).

    `protocol` ('custom', 'release', 'adaptive'; see protocols.py) fills the settings left
    None and refuses those that contradict it. `eval_draws`: evaluation draws of a stochastic
    model (an image is robust only if every draw is right); `attack_seeds`: every attack is
    run with this many seeds (robust accuracy per seed, and its spread). `attack_resolution`
    ('native', 'model'; None: native for images of one size smaller than the model's input,
    decided by the runner) is which pixels the attacks perturb (see resolution.py).
    `release_precision` ('emulated', 'float16'; None: emulated on CPU, float16 on CUDA) is how
    the release threat's float16 model runs (docs/release-precision.md)."""

    data: str
    out: Path
    data_root: str | None = None
    class_names: str | None = None
    val_labels: str | None = None
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_WEIGHTS
    device: str | None = None
    precision: str | None = None
    templates: str | tuple[str, ...] | None = None
    n: int | None = 1000
    seed: int = 0
    batch_size: int | None = None
    attack: str | None = None
    norm: str = "linf"
    eps: tuple[float, ...] = (4.0,)
    steps: int | None = None
    alpha: float | None = None
    eot: int | None = None
    threats: tuple[str, ...] | None = None
    models: tuple[str, ...] = (UNDEFENDED, "clipure_cos")
    defense_settings: Mapping[str, Mapping] = field(default_factory=dict)
    max_batches: int | None = None
    progress: bool = True
    protocol: str = "custom"
    eval_draws: int | None = None
    attack_seeds: int | None = None
    square_queries: int = SQUARE_QUERIES
    attack_resolution: str | None = None
    release_precision: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        models = tuple(MODEL_ALIASES.get(name, name) for name in self.models)
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "eps", tuple(float(eps) for eps in self.eps))
        coupled = any(
            bool(self.defense_settings.get(name, {}).get("batch_coupled")) for name in models
        )
        given = {
            "attack": self.attack,
            "threats": None if self.threats is None else tuple(self.threats),
            "batch_size": self.batch_size,
            "precision": self.precision,
            "eot": self.eot,
            "eval_draws": self.eval_draws,
            "attack_seeds": self.attack_seeds,
            "cos_batch_coupled": coupled or None,
        }
        resolved = resolve(self.protocol, given)
        for name in ("attack", "threats", "batch_size", "precision", "eval_draws", "attack_seeds"):
            object.__setattr__(self, name, resolved.get(name))
        if self.attack_seeds is None:
            object.__setattr__(self, "attack_seeds", 1)
        if self.protocol == "adaptive" and self.eot is not None and self.eot < ADAPTIVE_EOT:
            raise InputError(
                f"--protocol adaptive attacks stochastic defences with EOT >= {ADAPTIVE_EOT}; "
                f"got --eot {self.eot}."
            )
        if self.protocol != "adaptive":
            object.__setattr__(self, "eot", resolved["eot"])
        if self.eval_draws is None:
            default = ADAPTIVE_DRAWS if self.protocol == "adaptive" else 1
            object.__setattr__(self, "eval_draws", default)
        self._resolve_templates()
        self._resolve_attack_resolution()
        check_release_precision(self.release_precision, "cpu")  # None: the device's default
        _integer("batch size", self.batch_size, 1)
        _integer("seed", self.seed, 0)
        _integer("evaluation draws", self.eval_draws, 1, MAX_EVAL_DRAWS)
        _integer("attack seeds", self.attack_seeds, 1, MAX_ATTACK_SEEDS)
        if self.n is not None:
            _integer("n", self.n, 1)
        if self.max_batches is not None:
            _integer("max batches", self.max_batches, 1)
        _unique_non_empty("models (--defense)", models)
        columns = self.columns()  # DEFENSE@BACKBONE: refused here, before any weights load
        names = [columns[m].name if m in columns else m for m in models]
        object.__setattr__(self, "models", tuple(names))
        _unique_non_empty("models (--defense)", self.models)
        if self.protocol == "release" and any(c.backbone for c in columns.values()):
            raise InputError(
                "--protocol release runs one backbone: use DEFENSE@BACKBONE columns with "
                "--protocol custom or adaptive."
            )
        _unique_non_empty("threat models", self.threats)
        _unique_non_empty("eps values", self.eps)
        for threat in self.threats:
            check_threat(threat)
        for eps in self.eps:
            self.attack_config(eps)  # validates method, norm, eps, steps, alpha, eot
        self.conditions()  # validates the protocol's other attacks

    def _resolve_templates(self) -> None:
        if self.protocol != "release":
            object.__setattr__(self, "templates", self.templates or "ensemble")
            resolve_templates(self.templates)  # refused here, not after the model is loaded
            return
        wanted = release_templates(self.data)
        if self.templates is not None and self.templates != wanted:
            raise InputError(
                "--protocol release uses the release's templates for the dataset; "
                "drop --templates or use --protocol custom."
            )
        object.__setattr__(self, "templates", wanted)

    def _resolve_attack_resolution(self) -> None:
        check_attack_resolution(self.attack_resolution)
        wanted = release_attack_resolution(self.data) if self.protocol == "release" else None
        if wanted is None:
            return
        if self.attack_resolution not in (None, wanted):
            raise InputError(
                f"--protocol release perturbs {self.data}'s own pixels as the release did "
                f"(--attack-resolution {wanted}); drop the flag or use --protocol custom."
            )
        object.__setattr__(self, "attack_resolution", wanted)

    def conditions(self) -> list[Condition]:
        """Every (eps, threat, attack, attack seed) the run evaluates, in report order."""
        conditions = []
        for eps in self.eps:
            for seed_index in range(self.attack_seeds):
                conditions += [
                    Condition(eps, threat, self.attack_config(eps), seed_index)
                    for threat in self.threats
                ]
                if self.protocol == "adaptive":
                    conditions += [
                        Condition(
                            eps, EXTRA_ATTACK_THREAT, self.extra_attack(name, eps), seed_index
                        )
                        for name in ADAPTIVE_EXTRA_ATTACKS
                    ]
        return conditions

    def check_classes(self, num_classes: int) -> None:
        """Refuse a run whose attacks cannot run on `num_classes` classes (before any model
        work: the data set's class count is known before the model is loaded)."""
        for condition in self.conditions():
            try:
                check_classes(condition.attack, num_classes, "classes (a data set with more)")
            except InputError as error:
                if self.protocol == "custom":
                    raise
                raise InputError(
                    f"--protocol {self.protocol}: {error} The protocol fixes its attacks; "
                    "to choose one, use --protocol custom --attack NAME."
                ) from None

    def extra_attack(self, method: str, eps: float) -> AttackConfig:
        """One of the adaptive protocol's gradient-free attacks (Square, noise) at `eps`."""
        steps = self.square_queries if method == "square" else NOISE_STEPS
        return AttackConfig(method, self.norm, eps * self.eps_scale, steps)

    def eot_for(self, method: str, stochastic: bool) -> int:
        """EOT samples of `method` against a model (adaptive: ADAPTIVE_EOT for stochastic
        models; custom: --eot for every model, as given)."""
        if method not in EOT_METHODS:
            return 1
        if self.protocol == "adaptive":
            return (self.eot or ADAPTIVE_EOT) if stochastic else 1
        return self.eot

    def draws_for(self, stochastic: bool) -> int:
        """Evaluation draws of a model: `eval_draws` if it is stochastic, else 1."""
        return self.eval_draws if stochastic else 1

    @property
    def defenses(self) -> tuple[str, ...]:
        return tuple(name for name in self.models if name != UNDEFENDED)

    def columns(self) -> dict[str, Column]:
        """Every model but the undefended start-up one, as a column (see columns.py)."""
        home = home_ref(self.model, self.pretrained)
        return {name: parse_column(name, home) for name in self.defenses}

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
        eot = self.eot if self.protocol != "adaptive" else 1  # per model: eot_for
        return AttackConfig(
            self.attack, self.norm, eps * scale, self.resolved_steps, alpha, eot_samples=eot
        )

    def own_settings(self) -> dict:
        """The run's settings that the flags alone decide (part of results.json's `settings`;
        a resume is refused on them before any model work)."""
        return {
            "model": self.model,
            "pretrained": effective_pretrained(self.model, self.pretrained),
            "templates": self.templates,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "attack": self.attack_settings(),
            "threats": list(self.threats),
            "models": list(self.models),
            "protocol": self.protocol,
        }

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

    def evaluation_settings(self) -> dict:
        """How the protocol evaluates (EOT and draws per model are added by the runner)."""
        return {
            "conditions": [
                {"eps": c.eps, "threat": c.threat, "attack": c.attack_name, "seed": c.seed_index}
                for c in self.conditions()
            ],
            "eval_draws_stochastic": self.eval_draws,
            "attack_seeds": self.attack_seeds,
            "square_queries": self.square_queries if self.protocol == "adaptive" else None,
        }


def _integer(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    too_big = maximum is not None and isinstance(value, int) and value > maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or too_big:
        limit = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise InputError(f"{name} must be an integer {limit}, got {value!r}.")


def _unique_non_empty(name: str, values: tuple) -> None:
    if not values:
        raise InputError(f"{name}: give at least one.")
    if len(set(values)) != len(values):
        raise InputError(f"{name}: {', '.join(map(str, values))} has duplicates.")
