"""From finished batch records to per-image rows and accuracies with 95 % intervals.

Robust accuracy is the fraction of images a model classifies correctly both clean and after
the attack: an image misclassified when clean is never counted as robust. The worst case of
an image is robust only if it is robust under every condition (threat, attack, attack seed)
of its eps, AutoAttack's convention.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .config import UNDEFENDED
from .stats import accuracy_summary, mcnemar_exact

WORST_CASE = "worst case"

ROW_FIELDS = (
    "position",
    "image",
    "true_index",
    "true_label",
    "eps",
    "threat",
    "attack",
    "attack_seed",
    "model",
    "clean_index",
    "clean_label",
    "adversarial_index",
    "adversarial_label",
    "clean_correct",
    "robust",
    "attack_success",
    "draws",
    "correct_draws",
    "linf",
    "l2",
    "undone_by_rounding",
    "repaired",
)


def image_rows(
    records: Sequence[dict], classes: Sequence[str], attack: str | None = None
) -> list[dict]:
    """One row per (image, eps, threat, attack, attack seed, model), images in subset order
    (see ROW_FIELDS); `attack` names the attack of conditions that do not name their own."""
    rows = []
    for record in sorted(records, key=lambda record: record["batch"]):
        for j, (position, image, target) in enumerate(
            zip(record["positions"], record["ids"], record["targets"], strict=True)
        ):
            for condition in record["adversarial"]:
                for model, predictions in condition["predictions"].items():
                    clean, adversarial = record["clean"][model][j], predictions[j]
                    clean_correct = clean == target
                    robust = clean_correct and adversarial == target
                    draws = condition.get("draws", {}).get(model, 1)
                    correct_draws = condition.get("correct_draws", {}).get(model)
                    rows.append(
                        {
                            "position": position,
                            "image": image,
                            "true_index": target,
                            "true_label": classes[target],
                            "eps": condition["eps"],
                            "threat": condition["threat"],
                            "attack": condition.get("attack", attack),
                            "attack_seed": condition.get("seed_index", 0),
                            "model": model,
                            "clean_index": clean,
                            "clean_label": classes[clean],
                            "adversarial_index": adversarial,
                            "adversarial_label": classes[adversarial],
                            "clean_correct": clean_correct,
                            "robust": robust,
                            "attack_success": clean_correct and not robust,
                            "draws": draws,
                            "correct_draws": (
                                correct_draws[j] if correct_draws else int(adversarial == target)
                            ),
                            "linf": condition["linf"][model][j],
                            "l2": condition["l2"][model][j],
                            "undone_by_rounding": _image_fact(
                                condition, "undone_by_rounding", model, j
                            ),
                            "repaired": _image_fact(condition, "repaired", model, j),
                        }
                    )
    return rows


def _image_fact(condition: dict, name: str, model: str, index: int) -> bool | None:
    """A per-image rounding fact of a condition (None where it was not recorded)."""
    values = condition.get(name, {}).get(model)
    return None if values is None else values[index]


def _count(rows: Sequence[dict], name: str) -> int | None:
    """How many rows have `name` True; None when no row recorded it."""
    values = [row[name] for row in rows if row[name] is not None]
    return sum(values) if values else None


def clean_accuracy(records: Sequence[dict], models: Sequence[str]) -> dict[str, dict]:
    """Per model: correct, n, accuracy and Wilson 95 % interval on the clean images."""
    summary = {}
    for model in models:
        correct = total = 0
        for record in records:
            for prediction, target in zip(record["clean"][model], record["targets"], strict=True):
                correct += prediction == target
                total += 1
        summary[model] = accuracy_summary(correct, total)
    return summary


def robust_accuracy(rows: Sequence[dict]) -> list[dict]:
    """Per (eps, threat, attack, model), in row order: robust accuracy with its interval under
    the first attack seed, the attack success rate among clean-correct images, the largest
    perturbation applied, and (first attack seed) how many images 8-bit rounding made
    non-adversarial again and how many of those the lattice re-attack repaired (None for a
    model that was not the one attacked, or where not recorded). With several attack seeds,
    `seeds` adds the accuracy under each, their mean, standard deviation, min and max, and
    `worst_over_seeds` (an image robust under every seed)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["eps"], row["threat"], row["attack"], row["model"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (eps, threat, attack, model), group in groups.items():
        first = [row for row in group if row["attack_seed"] == 0]
        clean_correct = sum(row["clean_correct"] for row in first)
        successes = sum(row["attack_success"] for row in first)
        entry = {
            "eps": eps,
            "threat": threat,
            "attack": attack,
            "model": model,
            **accuracy_summary(sum(row["robust"] for row in first), len(first)),
            "attack_success_rate": successes / clean_correct if clean_correct else None,
            "max_linf": max(row["linf"] for row in group),
            "max_l2": max(row["l2"] for row in group),
            "undone_by_rounding": _count(first, "undone_by_rounding"),
            "repaired": _count(first, "repaired"),
        }
        seeds = sorted({row["attack_seed"] for row in group})
        if len(seeds) > 1:
            entry["seeds"] = _seed_spread(group, seeds)
            entry["worst_over_seeds"] = _worst_per_image(group)
        summary.append(entry)
    return summary


def _seed_spread(group: Sequence[dict], seeds: Sequence[int]) -> dict:
    accuracies = []
    for seed in seeds:
        picked = [row["robust"] for row in group if row["attack_seed"] == seed]
        accuracies.append(sum(picked) / len(picked))
    return {
        "accuracy": accuracies,
        "mean": statistics.fmean(accuracies),
        "std": statistics.stdev(accuracies),
        "min": min(accuracies),
        "max": max(accuracies),
    }


def _robust_by_image(group: Sequence[dict]) -> dict[int, bool]:
    """Per image position: robust under every row of `group`."""
    robust: dict[int, bool] = {}
    for row in group:
        robust[row["position"]] = robust.get(row["position"], True) and row["robust"]
    return robust


def _worst_per_image(group: Sequence[dict]) -> dict:
    robust = _robust_by_image(group)
    return accuracy_summary(sum(robust.values()), len(robust))


def worst_case(rows: Sequence[dict]) -> list[dict]:
    """Per (eps, model): the accuracy of images robust under every condition of that eps
    (every threat, attack and attack seed), and how many conditions that covers."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["eps"], row["model"]), []).append(row)
    summary = []
    for (eps, model), group in groups.items():
        conditions = {(row["threat"], row["attack"], row["attack_seed"]) for row in group}
        entry = {"eps": eps, "model": model, **_worst_per_image(group)}
        summary.append(entry | {"conditions": len(conditions)})
    return summary


def paired_comparison(records: Sequence[dict], rows: Sequence[dict]) -> list[dict]:
    """Each defence against the undefended model on the same images: clean, under each
    condition (first attack seed) and in the worst case per eps. Counts of images right for
    both, the defence only, the undefended model only, neither, and the exact two-sided
    McNemar p-value (empty when the run has no undefended model)."""
    models = list(dict.fromkeys(row["model"] for row in rows))
    if UNDEFENDED not in models:
        return []
    outcomes: dict[tuple, dict[str, dict[int, bool]]] = {}
    for record in records:
        pairs = zip(record["positions"], record["targets"], strict=True)
        for j, (position, target) in enumerate(pairs):
            for model, predictions in record["clean"].items():
                clean = outcomes.setdefault((None, "clean", None), {})
                clean.setdefault(model, {})[position] = predictions[j] == target
    worst: dict[tuple, list[dict]] = {}
    for row in rows:
        worst.setdefault((row["eps"], row["model"]), []).append(row)
        if row["attack_seed"] == 0:
            key = (row["eps"], row["threat"], row["attack"])
            outcomes.setdefault(key, {}).setdefault(row["model"], {})[row["position"]] = row[
                "robust"
            ]
    for (eps, model), group in worst.items():
        outcomes.setdefault((eps, WORST_CASE, None), {})[model] = _robust_by_image(group)
    comparisons = []
    for (eps, threat, attack), by_model in outcomes.items():
        reference = by_model[UNDEFENDED]
        for model in models:
            if model == UNDEFENDED:
                continue
            mine = by_model[model]
            pairs = [(mine[position], reference[position]) for position in reference]
            counts = {
                "both": sum(a and b for a, b in pairs),
                "defense_only": sum(a and not b for a, b in pairs),
                "undefended_only": sum(b and not a for a, b in pairs),
                "neither": sum(not a and not b for a, b in pairs),
            }
            comparisons.append(
                {
                    "eps": eps,
                    "threat": threat,
                    "attack": attack,
                    "defense": model,
                    "n": len(pairs),
                    **counts,
                    "p_value": mcnemar_exact(counts["defense_only"], counts["undefended_only"]),
                }
            )
    return comparisons


def stage_seconds(records: Sequence[dict]) -> dict[str, float]:
    """Seconds per stage summed over batches (and so over processes and invocations)."""
    totals: dict[str, float] = {}
    for record in records:
        for stage, seconds in record["seconds"].items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return totals
