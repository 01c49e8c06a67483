"""What the UI and the API ask of the engine: one request in UI units -> PlaygroundResult."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clipure_core import AttackConfig, InputError, Playground, PlaygroundResult, load_backbone
from clipure_core.attacks import AUTOATTACK_TARGETS, METHODS
from clipure_core.backbone import Backbone
from clipure_core.images import open_image
from clipure_core.prior import prior_for
from clipure_core.prompts import parse_labels

from .catalog import ModelChoice

FILE_LIFETIME_S = 3600


class Cancelled(Exception):
    """The user pressed Stop."""


@dataclass(frozen=True)
class PlaygroundRequest:
    """One request in the units the UI shows: L-inf eps and step size in /255, L2 in [0, 1]."""

    labels: str
    method: str = "pgd"
    norm: str = "linf"
    eps: float = 4.0
    steps: int = 10
    step_size: float | None = None
    threat: str = "transfer"
    defenses: Sequence[str] = ("clipure_cos",)
    seed: int = 0
    true_label: str | None = None
    target_label: str | None = None
    eot_samples: int = 1
    cos_steps: int = 10
    cos_step_size: float = 30.0
    diff_steps: int = 10
    diff_step_size: float = 30.0

    def attack_config(self) -> AttackConfig:
        method = self.method.lower()
        if method not in METHODS and method != "apgd":
            raise InputError(f"attack method {self.method!r}: use one of {', '.join(METHODS)}.")
        scale = 1 / 255 if self.norm.lower() == "linf" else 1.0
        step_size = None if not self.step_size else self.step_size * scale
        return AttackConfig(
            method,
            self.norm,
            _number(self.eps, "eps") * scale,
            _integer(self.steps, "steps"),
            step_size,
            eot_samples=_integer(self.eot_samples, "EOT samples"),
        )


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None


def _integer(value, name: str) -> int:
    number = _number(value, name)
    if not number.is_integer():
        raise InputError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def estimated_queries(config: AttackConfig, targets: int, num_labels: int) -> int:
    """Model forwards an attack will make (for the progress bar), per attacked model x targets."""
    per_attack = config.effective_steps * config.eot_samples
    if config.method in ("apgd-t", "autoattack"):
        target_classes = min(num_labels - 1, AUTOATTACK_TARGETS)
        per_attack = (config.steps + 1) * config.eot_samples * target_classes
        if config.method == "autoattack":
            per_attack += (config.steps + 1) * config.eot_samples
    elif config.method.startswith("apgd"):
        per_attack = (config.steps + 1) * config.eot_samples
    return max(1, per_attack * targets)


class PlaygroundService:
    """Loads backbones on demand (cached per process) and runs requests on them."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self._playgrounds: dict[int, Playground] = {}
        self._lock = threading.Lock()
        self.output_dir = Path(tempfile.mkdtemp(prefix="clipure-playground-"))

    def backbone(self, choice: ModelChoice) -> Backbone:
        return load_backbone(choice.name, choice.pretrained, device=self.device)

    def diff_prior(self, choice: ModelChoice) -> str | None:
        """The prior CLIPure-Diff would use with this backbone, if any."""
        return prior_for(self.backbone(choice))

    def playground(self, choice: ModelChoice) -> Playground:
        backbone = self.backbone(choice)
        with self._lock:
            return self._playgrounds.setdefault(id(backbone), Playground(backbone))

    def run(
        self,
        choice: ModelChoice,
        image: str | Path | Image.Image | None,
        request: PlaygroundRequest,
        on_progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> PlaygroundResult:
        """Run `request`; `on_progress(done, total)` per model query; `cancel` aborts it."""
        if image is None:
            raise InputError("no image: upload or paste a photo, or click an example.")
        image = open_image(image)
        attack = request.attack_config()
        defenses = [name for name in request.defenses if name]
        attacked = 1 + (len(defenses) if request.threat != "transfer" else 0)
        label_count = len(parse_labels(request.labels)[0])
        total = estimated_queries(attack, attacked, label_count)

        def on_query(done: int) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_progress is not None:
                on_progress(min(done, total), total)

        return self.playground(choice).run(
            image,
            request.labels,
            attack,
            threat=request.threat,
            defenses=defenses,
            seed=_integer(request.seed, "seed"),
            true_label=request.true_label or None,
            target_label=request.target_label or None,
            defense_settings={
                "clipure_cos": {
                    "steps": _integer(request.cos_steps, "CLIPure-Cos steps"),
                    "step_size": _number(request.cos_step_size, "CLIPure-Cos step size"),
                },
                "clipure_diff": {
                    "steps": _integer(request.diff_steps, "CLIPure-Diff steps"),
                    "step_size": _number(request.diff_step_size, "CLIPure-Diff step size"),
                },
            },
            on_query=on_query,
        )

    def save_downloads(self, result: PlaygroundResult) -> tuple[Path, Path]:
        """Write the adversarial PNG (the evaluated 8-bit image) and the result JSON."""
        self._prune()
        stem = self.output_dir / f"clipure-{uuid.uuid4().hex[:12]}"
        png, data = stem.with_suffix(".png"), stem.with_suffix(".json")
        result.adversarial_image.save(png, format="PNG")
        data.write_text(json.dumps(result.to_dict(), indent=2))
        return png, data

    def _prune(self) -> None:
        cutoff = time.time() - FILE_LIFETIME_S
        for path in self.output_dir.glob("clipure-*"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
