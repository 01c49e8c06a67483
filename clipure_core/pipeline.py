"""One request: prepare a photo, attack it, purify, and report what every model predicts."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import open_clip
import torch
import torchattacks
from PIL import Image

from .attacks import AttackConfig, check_classes, craft_attack
from .backbone import Backbone
from .classifier import ZeroShotClassifier
from .columns import (
    UNDEFENDED,
    BackboneRef,
    Column,
    check_fits,
    home_ref,
    parse_columns,
)
from .errors import InputError
from .lattice import round_attack
from .loading import is_loaded, load_backbone, precision_notice
from .pixels import perturbation_norms, pil_to_pixels, pixels_to_pil
from .prompts import label_index, parse_labels
from .purifiers import Purifier, TrajectoryRecorder, build_purifier, check_defense
from .seeding import derive_seed, seeded
from .served import ServedModel, serve_columns
from .threats import check_threat

_MEMO_SIZE = 16


@dataclass
class PlaygroundResult:
    """Everything one request produced. `to_dict()` is the JSON schema the app serves.

    Under the transfer threat there is one adversarial image (crafted on the undefended
    model). Under adaptive threats every model is attacked on its own, so each has its own
    image; `image_for[model]` names the image a model was evaluated on. `rounding[model]`
    says, per attacked model, what 8-bit rounding did to its attack (`LatticeResult.image`).
    """

    labels: list[str]
    true_label: str
    clean_image: Image.Image
    adversarial_images: dict[str, Image.Image]
    image_for: dict[str, str]
    probabilities: dict[str, dict[str, list[float]]]
    diagnostics: dict[str, dict]
    timings_ms: dict[str, float]
    settings: dict
    notices: list[str] = field(default_factory=list)
    rounding: dict[str, dict] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        """The attacked model whose image is shown first: the first defence under an
        adaptive threat, otherwise the undefended model."""
        names = list(self.adversarial_images)
        return names[1] if len(names) > 1 else names[0]

    @property
    def adversarial_image(self) -> Image.Image:
        return self.adversarial_images[self.primary]

    @property
    def models(self) -> list[str]:
        return list(self.probabilities["clean"])

    def perturbations(self) -> dict[str, dict[str, float]]:
        clean = pil_to_pixels(self.clean_image).unsqueeze(0)
        return {
            name: perturbation_norms(clean, pil_to_pixels(image).unsqueeze(0))
            for name, image in self.adversarial_images.items()
        }

    def predictions(self) -> dict[str, dict[str, str]]:
        return {
            condition: {
                model: self.labels[max(range(len(probs)), key=probs.__getitem__)]
                for model, probs in per_model.items()
            }
            for condition, per_model in self.probabilities.items()
        }

    def verdicts(self) -> list[str]:
        """One line per model, e.g. 'undefended: cat 91% -> dog 78%'."""
        lines = []
        for model in self.models:
            clean = self._top(self.probabilities["clean"][model])
            adversarial = self._top(self.probabilities["adversarial"][model])
            lines.append(f"{model}: {clean} -> {adversarial}")
        return lines

    def _top(self, probs: list[float]) -> str:
        best = max(range(len(probs)), key=probs.__getitem__)
        return f"{self.labels[best]} {probs[best]:.0%}"

    def to_dict(self) -> dict:
        perturbations = self.perturbations()
        return {
            "labels": self.labels,
            "true_label": self.true_label,
            "probabilities": self.probabilities,
            "predictions": self.predictions(),
            "perturbation": perturbations[self.primary],
            "adversarial_images": {
                name: {"perturbation": perturbations[name]} for name in self.adversarial_images
            },
            "image_for": self.image_for,
            "rounding": self.rounding,
            "diagnostics": self.diagnostics,
            "timings_ms": self.timings_ms,
            "settings": self.settings,
            "notices": self.notices,
            "verdicts": self.verdicts(),
        }


@dataclass(frozen=True)
class CheckedRequest:
    """A request's settings as `check_request` accepted them."""

    labels: list[str]
    notices: list[str]
    attack: AttackConfig  # with the target's index when a target label was given
    columns: list[Column]  # the models besides the undefended start-up one
    true_index: int | None  # None: the undefended model's clean prediction

    @property
    def defenses(self) -> list[str]:
        """The columns' names, each a spec `Playground.run` takes again (see columns.py)."""
        return [column.name for column in self.columns]


def check_request(
    labels: str | Sequence[str],
    attack: AttackConfig | None = None,
    threat: str = "transfer",
    defenses: Iterable[str] | str = ("clipure_cos",),
    seed: int = 0,
    true_label: str | None = None,
    target_label: str | None = None,
    home: BackboneRef | None = None,
) -> CheckedRequest:
    """Everything a request can be refused for without the model (InputError, with the way
    out). `Playground.run` calls it first; the command line calls it before loading weights.
    `defenses` are column specs (`DEFENSE` or `DEFENSE@BACKBONE`, see columns.py); `home`
    is the start-up backbone, whose columns keep their plain names."""
    check_threat(threat)
    labels, notices = parse_labels(labels)
    columns = parse_columns(defenses, home)
    attack = attack or AttackConfig()
    if target_label is not None:
        attack = dataclasses.replace(attack, targeted_label=label_index(labels, target_label))
    check_classes(attack, len(labels))
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise InputError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}.")
    true_index = label_index(labels, true_label) if true_label else None
    return CheckedRequest(labels, notices, attack, columns, true_index)


class Playground:
    """Runs requests against one backbone (and the columns' other backbones, loaded once
    with the same device and precision); classifiers and purifiers are memoised."""

    def __init__(self, backbone: Backbone, templates: str | Sequence[str] = "ensemble") -> None:
        self.backbone = backbone
        self.templates = templates
        self._memo: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self._others: dict[tuple[str, str], Playground] = {}

    @property
    def home(self) -> BackboneRef:
        """The start-up backbone as columns refer to it."""
        return home_ref(self.backbone.info.name, self.backbone.info.pretrained)

    def on_backbone(self, ref: BackboneRef | None) -> Playground:
        """The playground of a column's backbone (None: this one). A backbone not loaded yet
        (in this process) is refused when its weights do not fit in the device's free memory."""
        if ref is None or ref.key == self.home.key:
            return self
        with self._lock:
            if ref.key in self._others:
                return self._others[ref.key]
        info = self.backbone.info
        if not is_loaded(ref.name, ref.pretrained, info.device, info.precision):
            check_fits(ref, self.backbone.device, info.precision)
        backbone = load_backbone(ref.name, ref.pretrained, info.device, info.precision)
        with self._lock:
            return self._others.setdefault(ref.key, Playground(backbone, self.templates))

    def classifier(self, labels: Sequence[str]) -> ZeroShotClassifier:
        return self._memoised(
            ("classifier", tuple(labels)),
            lambda: ZeroShotClassifier(self.backbone, labels, self.templates),
        )

    def purifier(self, name: str, settings: Mapping | None = None) -> Purifier:
        settings = check_defense(name).resolve_settings(self.backbone, dict(settings or {}))
        return self._memoised(
            ("purifier", name, tuple(sorted(settings.items()))),
            lambda: build_purifier(name, self.backbone, self.templates, **settings),
        )

    def _memoised(self, key: tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        # Built outside the lock: one request encoding many labels must not hold up another
        # whose labels are cached (two requests building the same module both build it).
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        module = build()
        with self._lock:
            module = self._memo.setdefault(key, module)
            self._memo.move_to_end(key)
            if len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
            return module

    def run(
        self,
        image: Image.Image,
        labels: str | Sequence[str],
        attack: AttackConfig | None = None,
        threat: str = "transfer",
        defenses: Iterable[str] = ("clipure_cos",),
        seed: int = 0,
        true_label: str | None = None,
        target_label: str | None = None,
        defense_settings: Mapping[str, Mapping] | None = None,
        on_query: Callable[[int], None] | None = None,
    ) -> PlaygroundResult:
        """Attack `image`, purify, and report clean/adversarial probabilities of each model.

        `defenses` are columns (`clipure_cos`, `none@fare2-l14`, ...; see columns.py).
        `true_label` defaults to the undefended model's clean prediction. The adversarial
        pixels are rounded to 8 bits (inside the eps-ball) before they are evaluated, so the
        reported numbers are exactly those of the PNG in the result; an attack the rounding
        undid is re-attacked on the 8-bit lattice (`round_onto_lattice`, `result.rounding`).
        Under `transfer` every column is shown the image crafted on the undefended start-up
        model (resized to its input size inside); otherwise each column is attacked alone.
        """
        total, on_query = _Stopwatch(self.backbone.device), _counted_over_attacks(on_query)
        request = check_request(
            labels, attack, threat, defenses, seed, true_label, target_label, self.home
        )
        labels, attack = request.labels, request.attack
        notices = list(request.notices) + self._notices(attack)
        # the defences' settings are checked before the class texts are encoded
        served = serve_columns(self, request.columns, labels, defense_settings)
        timings = {"attack": 0.0, "purify": 0.0, "encode": 0.0}
        pixels = self.backbone.prepare(image).unsqueeze(0)
        with _Stopwatch(self.backbone.device, timings, "encode"), torch.no_grad():
            clean_z = self.backbone.encode_image(pixels)
        if request.true_index is not None:
            y = request.true_index
        else:
            y = int(served[UNDEFENDED].classifier.logits_from_embeddings(clean_z).argmax())
        y_tensor = torch.tensor([y], device=pixels.device)

        targets = [UNDEFENDED] if threat == "transfer" else list(served)
        adversarial, rounding = {}, {}
        for target in targets:
            model = served[target].attacked(threat, pixels)
            with _Stopwatch(self.backbone.device, timings, "attack"):
                raw = craft_attack(
                    model, pixels, y_tensor, attack, seed, len(labels), on_query=on_query
                )
                with seeded(derive_seed(seed, "lattice", target)):
                    lattice = round_attack(model, pixels, raw, y_tensor, attack)
            adversarial[target], rounding[target] = lattice.adversarial, lattice.image(0)

        image_for = {name: name if threat != "transfer" else UNDEFENDED for name in served}
        images = {"clean": {name: pixels for name in served}}
        images["adversarial"] = {name: adversarial[image_for[name]] for name in served}
        known = {(id(self.backbone), id(pixels)): clean_z}
        probabilities, diagnostics = _evaluate(served, images, seed, timings, known)
        timings["total"] = total.elapsed_ms()
        return PlaygroundResult(
            labels=labels,
            true_label=labels[y],
            clean_image=pixels_to_pil(pixels[0]),
            adversarial_images={t: pixels_to_pil(p[0]) for t, p in adversarial.items()},
            image_for=image_for,
            probabilities=probabilities,
            diagnostics=diagnostics,
            timings_ms=timings,
            settings=self._settings(labels, labels[y], attack, threat, served, seed),
            notices=notices,
            rounding=rounding,
        )

    def _notices(self, attack: AttackConfig) -> list[str]:
        info = self.backbone.info
        notices = [notice] if (notice := precision_notice(info.precision, info.device)) else []
        levels = attack.eps * 255
        if attack.norm == "linf" and abs(levels - round(levels)) > 1e-4:
            notices.append(
                f"eps {levels:.2f}/255 acts as {int(levels + 1e-4)}/255: the evaluated image "
                "has 8-bit pixels."
            )
        return notices

    def _settings(
        self,
        labels: list[str],
        true_label: str,
        attack: AttackConfig,
        threat: str,
        served: dict[str, ServedModel],
        seed: int,
    ) -> dict:
        info = self.backbone.info
        attack_settings = attack.to_dict()
        templates = self.templates if isinstance(self.templates, str) else list(self.templates)
        if attack.norm == "linf":
            attack_settings["eps_255"] = attack.eps * 255
        return {
            "model": info.name,
            "pretrained": info.pretrained,
            "weights_id": info.weights_id,
            "weights": info.weights,
            "device": info.device,
            "precision": info.precision,
            "templates": templates,
            "labels": labels,
            "true_label": true_label,
            "attack": attack_settings,
            "threat": threat,
            "defenses": {
                name: model.purifier.settings()
                for name, model in served.items()
                if model.purifier is not None
            },
            "columns": {name: model.describe() for name, model in served.items()},
            "seed": seed,
            "versions": {
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
                "torchattacks": torchattacks.__version__,
            },
        }


def _evaluate(
    served: dict[str, ServedModel],
    images: dict[str, dict[str, torch.Tensor]],
    seed: int,
    timings: dict[str, float],
    encoded: dict[tuple[int, int], torch.Tensor],
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict]]:
    """Each model's probabilities on its clean and adversarial image (each image encoded
    once per backbone; `encoded` holds those known, by (id(backbone), id(pixels))), and
    each purifier's diagnostics."""
    probabilities: dict[str, dict[str, list[float]]] = {condition: {} for condition in images}
    diagnostics = {}
    for name, model in served.items():
        runs = {}
        for condition, per_model in images.items():
            pixels = per_model[name]
            key = (id(model.backbone), id(pixels))
            if key not in encoded:
                with _Stopwatch(model.backbone.device, timings, "encode"), torch.no_grad():
                    encoded[key] = model.encode(pixels)
            z = encoded[key]
            if model.purifier is None:
                with torch.no_grad():
                    logits = model.classifier.logits_from_embeddings(z)
            else:
                with _Stopwatch(model.backbone.device, timings, "purify"):
                    # Own draws: a stochastic purifier must not reuse the attack's noise.
                    purify_seed = derive_seed(seed, "purify", name, condition)
                    logits, runs[condition] = _purify_and_trace(
                        model.classifier, model.purifier, z, purify_seed
                    )
            probabilities[condition][name] = _probs(logits)
        if runs:
            diagnostics[name] = {**runs["adversarial"], "clean": runs["clean"]}
    return probabilities, diagnostics


@torch.no_grad()
def _purify_and_trace(
    classifier: ZeroShotClassifier, purifier: Purifier, z: torch.Tensor, seed: int
) -> tuple[torch.Tensor, dict]:
    """Logits of the purified embedding, and the diagnostics of the purification.

    Stochastic purifiers draw from the global RNG: seeded here, and restored afterwards.
    """
    recorder = TrajectoryRecorder(
        purifier.null_embedding, classifier.class_embeddings, classifier.labels
    )
    with seeded(seed):
        purified = purifier(z, gradient="full", on_step=recorder)
    logits = classifier.logits_from_embeddings(purified)
    trace = {
        "angle_moved_deg": recorder.angle_moved_deg(),
        "max_angle_deg": recorder.max_angle_deg(),
        "trajectory": recorder.trajectory(),
    }
    return logits, trace


def _counted_over_attacks(on_query: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """`on_query` called with the queries of all of a request's attacks so far (each attack
    counts its own from 1: a progress bar went back when BPDA attacked a second model)."""
    if on_query is None:
        return None
    done = 0

    def counted(_attack_count: int) -> None:
        nonlocal done
        done += 1
        on_query(done)

    return counted


def _probs(logits: torch.Tensor) -> list[float]:
    return logits.detach().float().softmax(dim=-1)[0].cpu().tolist()


class _Stopwatch:
    """Wall time on `device` (synchronising CUDA), added to `timings[key]` on exit."""

    def __init__(self, device: torch.device, timings: dict | None = None, key: str = "") -> None:
        self.device, self.timings, self.key = device, timings, key
        self.start = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed_ms(self) -> float:
        return (self._now() - self.start) * 1000

    def __enter__(self) -> _Stopwatch:
        self.start = self._now()
        return self

    def __exit__(self, *_) -> None:
        self.timings[self.key] += self.elapsed_ms()
