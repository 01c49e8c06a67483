"""What the UI and the API ask of the engine: one request in UI units -> PlaygroundResult."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from clipure_core import (
    BACKBONE_ALIASES,
    LABEL_PRESETS,
    MAX_EOT_SAMPLES,
    MAX_EPS,
    MAX_SQUARE_QUERIES,
    MAX_STEPS,
    AttackConfig,
    Backbone,
    InputError,
    Labels,
    Playground,
    PlaygroundResult,
    class_prompt_groups,
    home_ref,
    load_backbone,
    measured_rate,
    missing_prompts,
    null_prompts,
    open_image,
    parse_columns,
    parse_labels,
    prompt_group_embeddings,
    resolve_templates,
    robustness_curve,
    text_progress,
)
from clipure_core.purifiers import PURIFIERS, check_defense

from .catalog import ModelChoice

FILE_LIFETIME_S = 3600
MAX_SEED = 2**32 - 1  # seeds the UI and the API accept (the engine takes any < 2**63)
TEXT_LIMIT_ENV = "CLIPURE_TEXT_LIMIT_S"
DEFAULT_TEXT_LIMIT_S = 120.0  # longest text encoding one request may hold the queue for
# on_progress(done, total, description): after every unit of work (a model query, a batch of
# text prompts). Raising from it (as `cancel` does) ends the work at its next query or batch.
Progress = Callable[[int, int, str], None]


class Cancelled(Exception):
    """The user pressed Stop."""


@dataclass(frozen=True)
class PlaygroundRequest:
    """One request in the units the UI shows: L-inf eps and step size in /255, L2 in [0, 1].

    `defense_settings` holds each defence's settings by the names of its registry
    (`Purifier.settings_spec`), e.g. {"clipure_cos": {"steps": 10, "step_size": 30.0}}.
    """

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
    defense_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    templates: str = "ensemble"  # or "single" (one template: 80 times fewer prompts to encode)

    def attack_config(self) -> AttackConfig:
        """The engine's AttackConfig (which validates it) from the UI's units; the numbers
        whose units the UI converts (eps, step size) are checked in those units."""
        method = _text(self.method, "attack method").strip().lower()
        norm = _text(self.norm, "norm").strip().lower().replace("-", "")
        if norm not in MAX_EPS:
            raise InputError(f"norm {norm!r}: use linf or l2.")
        scale = 1 / 255 if norm == "linf" else 1.0
        eps = _in_budget(self.eps, "eps", norm, linf_low=1)
        step_size = self.step_size
        if step_size:  # 0 or None: 2.5 x eps / steps
            step_size = _in_budget(step_size, "step size", norm, linf_low=0) * scale
        return AttackConfig(
            method,
            norm,
            eps * scale,
            _count(self.steps, "steps", 1, MAX_SQUARE_QUERIES if method == "square" else MAX_STEPS),
            step_size or None,
            eot_samples=_count(self.eot_samples, "EOT samples", 1, MAX_EOT_SAMPLES),
        )

    def check(self) -> None:
        """Refuse fields of the wrong kind (e.g. null from the API) with a readable message;
        values are checked where they are used."""
        _text(self.labels, "labels", allow_list=True)
        _text(self.threat, "threat model")
        for name in self.defenses or ():
            _text(name, "defence")
        _text(self.true_label, "true label")
        _text(self.target_label, "target label")
        _text(self.templates, "templates")

    def purifier_settings(self) -> dict[str, dict]:
        """Each defence's settings as its purifier takes them: whole numbers and numbers
        converted from the UI's floats (the purifier checks their ranges)."""
        settings = {}
        for name, values in (self.defense_settings or {}).items():
            spec = {s.name: s for s in check_defense(name).settings_spec}
            settings[name] = {
                key: _as_kind(
                    value, spec[key].kind, f"{check_defense(name).title} {spec[key].title}"
                )
                if key in spec
                else value
                for key, value in values.items()
            }
        return settings


def _as_kind(value, kind: type, name: str):
    """A UI value as the setting's type (gradio sends whole numbers as floats)."""
    if kind is int:
        return _integer(value, name)
    if kind is float:
        return _number(value, name)
    return value


def _text(value, name: str, allow_list: bool = False) -> str:
    """`value` as text ('' for None); a number, a mapping... is an InputError."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if allow_list and isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    raise InputError(f"{name} must be text, got {value!r}.")


def _number(value, name: str) -> float:
    """A finite float, or an InputError naming the field."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {value!r}.")
    return number


def _integer(value, name: str) -> int:
    number = _number(value, name)
    if not number.is_integer():
        raise InputError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def _count(value, name: str, low: int, high: int) -> int:
    """A whole number in [low, high], with the limits in the message."""
    number = _integer(value, name)
    if not low <= number <= high:
        raise InputError(f"{name} must be an integer from {low} to {high}, got {value!r}.")
    return number


def _in_budget(value, name: str, norm: str, linf_low: float) -> float:
    """eps or a step size in UI units: L-inf in /255 (from `linf_low` to 255), L2 in pixel
    units (0 < value <= MAX_EPS["l2"])."""
    number = _number(value, name)
    if norm == "linf" and not (linf_low <= number <= 255 and number > 0):
        low = f"[{linf_low:g}" if linf_low > 0 else "(0"
        raise InputError(
            f"{name} must be in {low}, 255] for L-inf (in units of 1/255: 4 means 4/255), "
            f"got {value!r}."
        )
    if norm == "l2" and not 0 < number <= MAX_EPS["l2"]:
        raise InputError(
            f"{name} must be in (0, {MAX_EPS['l2']:g}] for L2 (pixel units in [0, 1]), "
            f"got {value!r}."
        )
    return number


def _seed(value) -> int:
    return _count(value, "seed", 0, MAX_SEED)


def _duration(seconds: float) -> str:
    """'45 s', '3.5 min', '1.2 h'."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _preset_name(labels: list[str]) -> str | None:
    """The preset the labels came from (e.g. 'imagenet1k'), if they did."""
    for name, preset in LABEL_PRESETS.items():
        if list(preset) == labels:
            return name
    return None


def estimated_queries(config: AttackConfig, attacked: Sequence[str], num_labels: int) -> int:
    """Model forwards of a request (progress bars, GPU leases): the engine's estimate for
    the attack on each of the `attacked` models ('undefended' or a defence's name; a
    stochastic defence's points are judged on fresh draws)."""
    total = 0
    for name in attacked:
        defense = name.partition("@")[0]  # a column on another backbone: DEFENSE@BACKBONE
        stochastic = defense in PURIFIERS and PURIFIERS[defense].stochastic
        total += config.estimated_queries(num_labels, stochastic=stochastic)
    return max(1, total)


def attacked_models(threat: str, defenses: Sequence[str]) -> list[str]:
    """The models a request attacks: undefended CLIP, and each defence under an adaptive
    threat (under `transfer` every model sees undefended CLIP's image)."""
    return ["undefended", *(defenses if threat != "transfer" else [])]


@dataclass(frozen=True)
class AuditBackend:
    """What the threat matrix runs: `run(playground, image, labels, **options)` returning an
    object with `to_dict()` (clipure_core.audit.run_audit), and the conditions it knows (each
    with `title` and `attacker_knew`), in the matrix's order."""

    run: Callable[..., Any]
    conditions: Mapping[str, Any]


def engine_audit() -> AuditBackend:
    """The engine's audit (clipure_core.audit)."""
    from clipure_core.audit import CONDITIONS, run_audit

    return AuditBackend(run_audit, CONDITIONS)


@dataclass(frozen=True)
class _Job:
    """A checked request, ready for the engine."""

    attack: AttackConfig
    seed: int
    image: Image.Image
    labels: Labels  # parsed once per request, here; the engine passes them on as they are
    defenses: list[str]
    playground: Playground


def check_catalog_backbones(specs: Sequence[str]) -> None:
    """Refuse a column whose backbone is not a catalog alias (the app's default: a request
    must not make the server download weights or reveal which folders it has)."""
    for spec in specs:
        _, at, backbone = spec.partition("@")
        if at and backbone.strip() not in BACKBONE_ALIASES:
            raise InputError(
                f"column {spec!r}: the page takes the catalog's backbones "
                f"({', '.join(BACKBONE_ALIASES)}); other backbones need the app started "
                "with --any-backbone."
            )


class PlaygroundService:
    """Loads backbones on demand (cached per process) and runs requests on them.

    A request whose text embeddings are not cached encodes them first, with progress, if that
    takes at most `text_limit_s` at the prompts/s measured on this device (default
    CLIPURE_TEXT_LIMIT_S, else 120 s); a longer one is refused with the estimate and the ways
    out. Before the first measurement the first chunk of prompts measures it.
    """

    def __init__(
        self,
        device: str | None = None,
        audit: AuditBackend | None = None,
        text_limit_s: float | None = None,
        any_backbone: bool = False,
    ) -> None:
        self.device = device
        self.any_backbone = any_backbone
        self._audit = audit
        if text_limit_s is None:
            text_limit_s = float(os.environ.get(TEXT_LIMIT_ENV) or DEFAULT_TEXT_LIMIT_S)
        self.text_limit_s = text_limit_s
        self._playgrounds: dict[tuple[int, str], Playground] = {}
        self._lock = threading.Lock()
        self.output_dir = Path(tempfile.mkdtemp(prefix="clipure-playground-"))
        # removed when the service is garbage-collected or at the latest at interpreter exit
        weakref.finalize(self, shutil.rmtree, self.output_dir, ignore_errors=True)

    def backbone(self, choice: ModelChoice) -> Backbone:
        return load_backbone(choice.name, choice.pretrained, device=self.device)

    def playground(self, choice: ModelChoice, templates: str = "ensemble") -> Playground:
        backbone = self.backbone(choice)
        with self._lock:
            key = (id(backbone), templates)
            return self._playgrounds.setdefault(key, Playground(backbone, templates))

    def request_playground(self, choice: ModelChoice, request: PlaygroundRequest) -> Playground:
        """The playground for the request's templates, its text embeddings encoded (with
        progress, or refused when too long; see the class docstring)."""
        templates = (request.templates or "ensemble").strip().lower()
        if templates not in ("ensemble", "single"):
            raise InputError(f"templates {templates!r}: use ensemble or single.")
        return self.playground(choice, templates)

    def run(
        self,
        choice: ModelChoice,
        image: str | Path | Image.Image | None,
        request: PlaygroundRequest,
        on_progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> PlaygroundResult:
        """Run `request`; `on_progress(done, total, description)` sees the text encoding (if
        any) and every model query; `cancel` aborts it at the next batch or query."""
        job = self._prepare(choice, image, request, on_progress, cancel)
        attacked = attacked_models(request.threat, job.defenses)
        total = estimated_queries(job.attack, attacked, len(job.labels))

        def on_query(done: int) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_progress is not None:
                on_progress(min(done, total), total, "attack: model queries")

        with text_progress(self._text_progress(on_progress, cancel)):  # e.g. Diff's prompt
            return job.playground.run(
                job.image,
                job.labels,  # parsed once, in `_prepare`, with the notices parsing gave
                job.attack,
                threat=request.threat,
                defenses=job.defenses,
                seed=job.seed,
                true_label=request.true_label or None,
                target_label=request.target_label or None,
                defense_settings=request.purifier_settings(),
                on_query=on_query,
            )

    def curve(
        self,
        choice: ModelChoice,
        image: str | Path | Image.Image | None,
        request: PlaygroundRequest,
        on_progress: Progress | None = None,
        cancel: threading.Event | None = None,
        max_queries: int | None = None,
    ) -> dict:
        """The robustness curve (clipure_core.robustness_curve) of `request`'s photo, threat
        model and attack, its eps replaced by the ladder; progress and `cancel` as `run`."""
        job = self._prepare(choice, image, request, on_progress, cancel)

        def report(done: int, total: int, stage: str) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_progress is not None:
                on_progress(done, total, stage)

        with text_progress(self._text_progress(on_progress, cancel)):
            return robustness_curve(
                job.playground,
                job.image,
                job.labels,  # parsed once, in `_prepare`
                job.attack,
                threat=request.threat,
                defenses=job.defenses,
                seed=job.seed,
                true_label=request.true_label or None,
                target_label=request.target_label or None,
                defense_settings=request.purifier_settings(),
                on_progress=report,
                max_queries=max_queries,
            )

    def _prepare(
        self,
        choice: ModelChoice,
        image: str | Path | Image.Image | None,
        request: PlaygroundRequest,
        on_progress: Progress | None,
        cancel: threading.Event | None,
    ) -> _Job:
        """Check `request`, open the photo, and encode the text embeddings it lacks."""
        if image is None:
            raise InputError("no image: upload or paste a photo, or click an example.")
        request.check()
        # columns refused before any weights are loaded
        if not self.any_backbone:
            check_catalog_backbones(request.defenses or ())
        parse_columns(request.defenses or (), home_ref(choice.name, choice.pretrained))
        job = _Job(
            attack=request.attack_config(),
            seed=_seed(request.seed),
            image=open_image(image),
            labels=parse_labels(request.labels)[0],
            defenses=[name for name in request.defenses or () if name],
            playground=self.request_playground(choice, request),
        )
        self.encode_text(
            choice, job.playground, job.labels, bool(job.defenses), on_progress, cancel
        )
        return job

    @staticmethod
    def _text_progress(
        on_progress: Progress | None, cancel: threading.Event | None
    ) -> Callable[[int, int], None]:
        def on_text(done: int, total: int) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_progress is not None:
                on_progress(done, total, f"text embeddings: {total:,} prompts")

        return on_text

    def encode_text(
        self,
        choice: ModelChoice,
        playground: Playground,
        labels: list[str],
        null_prompt: bool,
        on_progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Encode (and cache) the labels' prompts, and the null prompt's, that are not cached
        yet, reporting progress with the time left; refuse, before or after the first chunk
        measured the speed, what would take longer than `text_limit_s`."""
        backbone = playground.backbone
        templates = resolve_templates(playground.templates)
        groups = class_prompt_groups(labels, templates)
        groups += [null_prompts(templates)] if null_prompt else []
        if not missing_prompts(backbone, groups):
            return
        decided = False

        def check(done: int, total: int) -> None:
            nonlocal decided
            if cancel is not None and cancel.is_set():
                raise Cancelled
            rate = measured_rate(backbone)
            if rate is not None and not decided:
                decided = True
                if (total - done) / rate > self.text_limit_s:
                    raise InputError(
                        self.text_refusal(choice, labels, templates, total, done, rate)
                    )
            if on_progress is not None:
                if rate is None:
                    desc = f"text embeddings: {total:,} prompts (measuring the speed)"
                else:
                    left = _duration((total - done) / rate)
                    desc = f"text embeddings: {total:,} prompts, about {left} left"
                on_progress(done, total, desc)

        prompt_group_embeddings(backbone, groups, on_progress=check)

    def text_refusal(
        self,
        choice: ModelChoice,
        labels: list[str],
        templates: tuple[str, ...],
        total: int,
        done: int,
        rate: float,
    ) -> str:
        """Why a request's text encoding is refused, with the estimate and the ways out."""
        device = self.backbone(choice).info.device
        given = ", ".join(labels)
        label_arg = _preset_name(labels) or (given if len(given) <= 200 else "LABELS")
        command = (
            f"python -m clipure_core cache-text --labels {shlex.quote(label_arg)} "
            f"--model {shlex.quote(choice.name)} --pretrained {shlex.quote(choice.pretrained)}"
            + ("" if len(templates) > 1 else " --templates single")
        )
        kept = " The labels encoded until now stay cached." if done else ""
        single = ""
        if len(templates) > 1:
            single = (
                f" use the single template ({len(labels):,} prompts, about "
                f"{_duration(len(labels) / rate)}; 'Prompts per label' in the Labels tab, "
                "--templates single on the command line);"
            )
        return (
            f"{total:,} text prompts of these labels are not cached yet ({len(labels):,} "
            f"labels x {len(templates)} templates): encoding them takes about "
            f"{_duration((total - done) / rate)} on this "
            f"{device} ({rate:,.0f} prompts/s), more than the {_duration(self.text_limit_s)} "
            f"this app allows a request ({TEXT_LIMIT_ENV}).{kept} Ways out: run the app on a "
            f"GPU;{single} or encode them once from the command line, which caches them for "
            f"this app: {command}"
        )

    @property
    def audit_backend(self) -> AuditBackend:
        if self._audit is None:
            self._audit = engine_audit()
        return self._audit

    def audit(
        self,
        choice: ModelChoice,
        image: str | Path | Image.Image | None,
        request: PlaygroundRequest,
        conditions: Sequence[str] | None = None,
        on_progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> dict:
        """The threat matrix of `request`'s photo (every condition x every model) as the
        audit's JSON; `request`'s eps, norm, steps, defences and seed apply, its attack
        method does not (each condition has its own). `cancel` aborts it."""
        job = self._prepare(choice, image, request, on_progress, cancel)

        def on_query(done: int, total: int, condition: str) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_progress is not None:
                on_progress(min(done, total), total, f"threat matrix: {condition}")

        return self.audit_backend.run(
            job.playground,
            job.image,
            job.labels,
            true_label=request.true_label or None,
            eps=job.attack.eps,
            norm=job.attack.norm,
            steps=job.attack.steps,
            defenses=job.defenses,
            defense_settings=request.purifier_settings(),
            seed=job.seed,
            conditions=conditions,
            on_progress=on_query,
        ).to_dict()

    def save_downloads(self, result: PlaygroundResult, payload: dict) -> tuple[Path, Path]:
        """Write the adversarial PNG (the evaluated 8-bit image) and `payload`, the result's
        JSON, as files."""
        self._prune()
        stem = self.output_dir / f"clipure-{uuid.uuid4().hex[:12]}"
        png, data = stem.with_suffix(".png"), stem.with_suffix(".json")
        result.adversarial_image.save(png, format="PNG")
        data.write_text(json.dumps(payload, indent=2))
        return png, data

    def _prune(self) -> None:
        cutoff = time.time() - FILE_LIFETIME_S
        for path in self.output_dir.glob("clipure-*"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
