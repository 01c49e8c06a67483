"""The audit's result and its JSON form (documented in docs/audit.md, served by the app)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .checks import Check
from .conditions import CONDITIONS
from .gradients import GradientStats


@dataclass(frozen=True)
class Cell:
    """What `model` predicts on the image of `condition`."""

    condition: str
    model: str
    prediction: str
    probability: float
    correct: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditResult:
    """Everything one audit produced; `to_dict()` is its JSON."""

    labels: list[str]
    true_label: str
    models: dict[str, str]  # name -> title, in column order
    matrix: list[Cell]
    gradients: list[GradientStats]
    checks: list[Check]
    settings: dict
    timings_ms: dict[str, float]
    notices: list[str] = field(default_factory=list)
    # per crafted image: `attack`, `model` and what 8-bit rounding did (LatticeResult.image)
    rounding: list[dict] = field(default_factory=list)

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(cell.condition for cell in self.matrix))

    def cell(self, condition: str, model: str) -> Cell:
        return next(c for c in self.matrix if c.condition == condition and c.model == model)

    def gradient(self, condition: str, model: str) -> GradientStats:
        return next(g for g in self.gradients if g.condition == condition and g.model == model)

    def checks_named(self, name: str) -> list[Check]:
        return [check for check in self.checks if check.name == name]

    def to_dict(self) -> dict:
        return {
            "labels": self.labels,
            "true_label": self.true_label,
            "models": [
                {"name": name, "title": title, **self.settings.get("columns", {}).get(name, {})}
                for name, title in self.models.items()
            ],
            "conditions": [
                {
                    "name": name,
                    "title": CONDITIONS[name].title,
                    "attacker_knew": CONDITIONS[name].attacker_knew,
                }
                for name in self.conditions
            ],
            "matrix": [cell.to_dict() for cell in self.matrix],
            "gradients": [stats.to_dict() for stats in self.gradients],
            "checks": [check.to_dict() for check in self.checks],
            "rounding": self.rounding,
            "settings": self.settings,
            "timings_ms": self.timings_ms,
            "notices": self.notices,
        }
