"""From finished batch records to per-image rows and accuracies with 95 % intervals.

Robust accuracy is the fraction of images a model classifies correctly both clean and after
the attack: an image misclassified when clean is never counted as robust.
"""

from __future__ import annotations

from collections.abc import Sequence

from .stats import accuracy_summary

ROW_FIELDS = (
    "position",
    "image",
    "true_index",
    "true_label",
    "eps",
    "threat",
    "model",
    "clean_index",
    "clean_label",
    "adversarial_index",
    "adversarial_label",
    "clean_correct",
    "robust",
    "attack_success",
    "linf",
    "l2",
)


def image_rows(records: Sequence[dict], classes: Sequence[str]) -> list[dict]:
    """One row per (image, eps, threat, model), images in subset order (see ROW_FIELDS)."""
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
                    rows.append(
                        {
                            "position": position,
                            "image": image,
                            "true_index": target,
                            "true_label": classes[target],
                            "eps": condition["eps"],
                            "threat": condition["threat"],
                            "model": model,
                            "clean_index": clean,
                            "clean_label": classes[clean],
                            "adversarial_index": adversarial,
                            "adversarial_label": classes[adversarial],
                            "clean_correct": clean_correct,
                            "robust": robust,
                            "attack_success": clean_correct and not robust,
                            "linf": condition["linf"][model][j],
                            "l2": condition["l2"][model][j],
                        }
                    )
    return rows


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
    """Per (eps, threat, model), in row order: robust accuracy with its interval, the attack
    success rate among clean-correct images, and the largest perturbation applied."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["eps"], row["threat"], row["model"]), []).append(row)
    summary = []
    for (eps, threat, model), group in groups.items():
        clean_correct = sum(row["clean_correct"] for row in group)
        successes = sum(row["attack_success"] for row in group)
        summary.append(
            {
                "eps": eps,
                "threat": threat,
                "model": model,
                **accuracy_summary(sum(row["robust"] for row in group), len(group)),
                "attack_success_rate": successes / clean_correct if clean_correct else None,
                "max_linf": max(row["linf"] for row in group),
                "max_l2": max(row["l2"] for row in group),
            }
        )
    return summary


def stage_seconds(records: Sequence[dict]) -> dict[str, float]:
    """Seconds per stage summed over batches (and so over processes and invocations)."""
    totals: dict[str, float] = {}
    for record in records:
        for stage, seconds in record["seconds"].items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return totals
