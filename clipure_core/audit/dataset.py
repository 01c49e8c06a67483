"""The audit of a labelled data set: every image audited, then counted per condition x model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import InputError
from ..evaluate.data import EvalDataset
from ..evaluate.subset import stratified_subset
from ..pipeline import Playground
from ..resolution import upsampled
from .checks import STATUSES
from .result import AuditResult
from .runner import run_audit

# on_image(done_images, total_images, result of the image just audited)
ImageCallback = Callable[[int, int, AuditResult], None]
GRADIENT_FIELDS = (
    "norm",
    "zero_fraction",
    "cos_to_full",
    "sign_agreement_with_full",
    "linf_progress",
)


@dataclass
class DatasetAudit:
    """Per-image audits of a data set; `to_dict()` aggregates them."""

    source: str
    ids: list[str]
    results: list[AuditResult]
    seconds: float
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        first = self.results[0]
        return {
            "source": self.source,
            "n_images": len(self.results),
            "labels": first.labels,
            "models": first.to_dict()["models"],
            "conditions": first.to_dict()["conditions"],
            "accuracy": self._accuracy(),
            "gradients": self._gradients(),
            "checks": self._checks(),
            "rounding": self._rounding(),
            "images": [
                {
                    "id": image_id,
                    "true_label": result.true_label,
                    "matrix": [cell.to_dict() for cell in result.matrix],
                }
                for image_id, result in zip(self.ids, self.results, strict=True)
            ],
            "settings": {
                **first.settings,
                "true_label": None,
                "attack_image_size": self._attack_image_size(),
            },
            "timings_ms": {"total": self.seconds * 1000},
            "notices": self.notices,
        }

    def _attack_image_size(self) -> dict | None:
        """The size of the attacked pixels when every image has the same one, else None."""
        sizes = [result.settings["attack_image_size"] for result in self.results]
        return sizes[0] if all(size == sizes[0] for size in sizes) else None

    def _accuracy(self) -> list[dict]:
        correct: dict[tuple[str, str], int] = {}
        for result in self.results:
            for cell in result.matrix:
                key = (cell.condition, cell.model)
                correct[key] = correct.get(key, 0) + int(cell.correct)
        n = len(self.results)
        return [
            {"condition": c, "model": m, "accuracy": k / n, "correct": k, "n": n}
            for (c, m), k in correct.items()
        ]

    def _gradients(self) -> list[dict]:
        """Means over images; direction means over the images where it exists."""
        values: dict[tuple[str, str], dict[str, list[float]]] = {}
        for result in self.results:
            for stats in result.gradients:
                row = values.setdefault((stats.condition, stats.model), {})
                for name in GRADIENT_FIELDS:
                    value = getattr(stats, name)
                    if value is not None:
                        row.setdefault(name, []).append(value)
        return [
            {
                "condition": c,
                "model": m,
                **{
                    f"mean_{name}": (sum(row[name]) / len(row[name])) if row.get(name) else None
                    for name in GRADIENT_FIELDS
                },
            }
            for (c, m), row in values.items()
        ]

    def _rounding(self) -> list[dict]:
        """Per crafted attack x model: images 8-bit rounding undid, and how many of those the
        lattice re-attack repaired (null where it was not tried: gradient-free attacks)."""
        counts: dict[tuple[str, str], dict] = {}
        for result in self.results:
            for entry in result.rounding:
                key = (entry["attack"], entry["model"])
                tally = counts.setdefault(key, {"undone_by_rounding": 0, "repaired": 0, "n": 0})
                tally["n"] += 1
                tally["undone_by_rounding"] += entry["undone_by_rounding"]
                if entry["repaired"] is None:
                    tally["repaired"] = None
                elif tally["repaired"] is not None:
                    tally["repaired"] += entry["repaired"]
        return [{"attack": a, "model": m, **tally} for (a, m), tally in counts.items()]

    def _checks(self) -> list[dict]:
        counts: dict[tuple, dict[str, int]] = {}
        for result in self.results:
            for check in result.checks:
                key = (check.name, check.condition, check.model)
                counts.setdefault(key, dict.fromkeys(STATUSES, 0))[check.status] += 1
        return [
            {"name": name, "condition": condition, "model": model, "counts": tally}
            for (name, condition, model), tally in counts.items()
        ]


def audit_dataset(
    playground: Playground,
    dataset: EvalDataset,
    *,
    num_images: int | None = None,
    seed: int = 0,
    on_image: ImageCallback | None = None,
    **audit_options,
) -> DatasetAudit:
    """Audit `num_images` images of `dataset` (a seeded subset stratified by class; None:
    all), each against its true class. `audit_options` are `run_audit`'s keywords (eps,
    norm, steps, defenses, conditions, checks, ..., on_progress for each image);
    `attack_resolution` None picks native for the whole set when every chosen image is
    smaller than the model's input, else model."""
    if num_images is not None and (
        isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1
    ):
        raise InputError(f"num_images must be a positive integer, got {num_images!r}.")
    if num_images is None or num_images >= len(dataset):
        chosen = list(range(len(dataset)))
    else:
        chosen = stratified_subset(dataset.targets, num_images, seed)
    if audit_options.get("attack_resolution", "model") is None:
        small = all(
            upsampled(dataset.image_size(i), playground.backbone.image_size) for i in chosen
        )
        audit_options["attack_resolution"] = "native" if small else "model"
    start = time.perf_counter()
    results = []
    for index in chosen:
        result = run_audit(
            playground,
            dataset.image(index),
            dataset.classifier_labels,
            true_label=dataset.targets[index],
            seed=seed,
            **audit_options,
        )
        results.append(result)
        if on_image is not None:
            on_image(len(results), len(chosen), result)
    return DatasetAudit(
        source=dataset.source,
        ids=[dataset.ids[index] for index in chosen],
        results=results,
        seconds=time.perf_counter() - start,
        notices=list(dict.fromkeys(n for result in results for n in result.notices)),
    )
