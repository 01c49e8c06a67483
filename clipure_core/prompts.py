"""Prompt templates and class-label presets for zero-shot classification."""

from __future__ import annotations

from collections.abc import Sequence

from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from .errors import InputError

SINGLE_TEMPLATE = "a photo of a {}."
MAX_LABELS = 1000
MAX_LABEL_CHARS = 200

CIFAR10_CLASSNAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
LABEL_PRESETS: dict[str, tuple[str, ...]] = {
    "cifar10": CIFAR10_CLASSNAMES,
    "imagenet1k": tuple(IMAGENET_CLASSNAMES),
}


def _ensemble_templates() -> tuple[str, ...]:
    # open_clip stores the CLIP paper's 80 ImageNet templates as lambdas; turn them into
    # format strings so they can be hashed, saved in settings and shown to users.
    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


TEMPLATE_PRESETS: dict[str, tuple[str, ...]] = {
    "ensemble": _ensemble_templates(),
    "single": (SINGLE_TEMPLATE,),
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Return the template strings for a preset name or a list of '{}' templates."""
    if isinstance(templates, str):
        if templates in TEMPLATE_PRESETS:
            return TEMPLATE_PRESETS[templates]
        templates = [templates]
    resolved = tuple(templates)
    if not resolved:
        raise InputError("templates: give a preset ('ensemble', 'single') or a non-empty list.")
    for template in resolved:
        if template.count("{}") != 1:
            raise InputError(
                f"template {template!r} must contain exactly one '{{}}' for the class name; "
                f"presets: {', '.join(TEMPLATE_PRESETS)}."
            )
    return resolved


def null_prompts(templates: Sequence[str]) -> list[str]:
    """The templates with an empty class name: CLIPure's 'null prompt' ("a photo of a .")."""
    return [template.format("") for template in templates]


class Labels(list):
    """Labels `parse_labels` has made (clean, unique, within the limits), with the notices
    parsing gave: parsed once at a request's entry, they pass through later layers as they are.
    """

    def __init__(self, labels: Sequence[str] = (), notices: Sequence[str] = ()) -> None:
        super().__init__(labels)
        self.notices = list(notices)


def parse_labels(labels: str | Sequence[str]) -> tuple[Labels, list[str]]:
    """Turn a preset name, a comma-separated string or a list into clean, unique labels.

    Whitespace runs become one space; any script and emoji are kept as given. At least one
    label, at most MAX_LABELS (after removing duplicates), each at most MAX_LABEL_CHARS.
    Returns (labels, notices); notices tell the user what was changed (duplicates dropped).
    Labels it returned come back as they are, with their notices (no second parse).
    """
    if isinstance(labels, Labels):
        return labels, list(labels.notices)
    if labels is None:
        labels = ""
    if isinstance(labels, str):
        key = labels.strip().lower().replace("-", "").replace("_", "")
        if key in LABEL_PRESETS:
            return Labels(LABEL_PRESETS[key]), []
        labels = labels.split(",")
    try:
        labels = list(labels)
    except TypeError:
        raise InputError(
            f"labels must be comma-separated text or a list of names, got {labels!r:.80}."
        ) from None
    cleaned = [" ".join(str(label).split()) for label in labels]
    cleaned = [label for label in cleaned if label]
    if not cleaned:
        raise InputError(
            "labels: give at least one class name (comma-separated), "
            "or a preset name: cifar10 (CIFAR-10) or imagenet1k (ImageNet-1k)."
        )
    unique = list(dict.fromkeys(cleaned))
    notices = []
    if len(unique) < len(cleaned):
        notices.append(f"{len(cleaned) - len(unique)} duplicate label(s) removed.")
    if len(unique) > MAX_LABELS:
        raise InputError(f"labels: {len(unique)} given, at most {MAX_LABELS} are allowed.")
    too_long = [label for label in unique if len(label) > MAX_LABEL_CHARS]
    if too_long:
        raise InputError(
            f"labels: each label may have at most {MAX_LABEL_CHARS} characters; "
            f"{too_long[0][:40]!r}... has {len(too_long[0])}."
        )
    return Labels(unique, notices), notices


def label_index(labels: Sequence[str], label: str | int) -> int:
    """The index of `label` in `labels` (spaces folded); an int is taken as the index itself
    (label lists may repeat names). InputError naming the list (its first 10) otherwise."""
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(labels):
            raise InputError(f"true label index {label} is not a label index.")
        return label
    cleaned = " ".join(str(label).split())
    if cleaned not in labels:
        shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
        raise InputError(f"label {label!r} is not in the label list ({shown}).")
    return list(labels).index(cleaned)
