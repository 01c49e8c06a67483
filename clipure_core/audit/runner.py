"""Run every condition against every model of one photo, measure gradients, run the checks.

Work is shared: one clean pass; one attack per distinct attacked module (undefended CLIP
under transfer / paper / BPDA / full is one white-box attack, crafted once); one encoding
per distinct image and encoder, whoever asks for it (`encoding_memo`: an attack's end point
judged by the attack, traced, rounded and evaluated is encoded once); the exact ('full')
gradient measured once per model as the reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import open_clip
import torch
import torchattacks
from PIL import Image
from torch import nn

from ..attacks import (
    MAX_EOT_SAMPLES,
    AttackConfig,
    check_classes,
    check_pixel_shape,
    craft_attack,
)
from ..classifier import ZeroShotClassifier
from ..columns import column_title, parse_columns
from ..encoding_memo import fresh_encodings, remembering_encodings
from ..errors import InputError
from ..images import normalize_image
from ..lattice import round_attack
from ..pipeline import Playground
from ..prompts import label_index, parse_labels
from ..purifiers import Purifier
from ..release import check_release_precision
from ..resolution import attack_pixels, check_attack_resolution, upsampled
from ..seeding import derive_seed, seeded
from ..served import serve_columns
from . import checks as audit_checks
from .autograd_probe import AutogradCounter
from .checklist_runs import ChecklistRuns
from .checks import CHECKS, Check
from .conditions import (
    CONDITIONS,
    GRADIENT_CONDITIONS,
    UNDEFENDED,
    WHITE_BOX_CONDITIONS,
    attack_key,
    check_checks_runnable,
    check_conditions,
    gradient_attack,
    noise_attack,
    pick_names,
    single_step_attack,
    square_attack,
    unfed_checks,
)
from .gradients import GradientStats, compare, pixel_gradient, pixels_seen
from .progress import Progress, ProgressCallback, Timer
from .result import AuditResult, Cell

SQUARE_QUERIES = 100
Key = tuple[str, str]


def run_audit(
    playground: Playground,
    image: Image.Image,
    labels: str | Sequence[str],
    *,
    true_label: str | int | None = None,
    eps: float = 4 / 255,
    norm: str = "linf",
    steps: int = 10,
    defenses: Iterable[str] | str = ("clipure_cos",),
    defense_settings: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    conditions: Iterable[str] | str | None = None,
    checks: Iterable[str] | str | None = None,
    square_queries: int = SQUARE_QUERIES,
    eot: int = 1,
    on_progress: ProgressCallback | None = None,
    attack_resolution: str | None = "model",
    thorough: bool = False,
    release_precision: str | None = None,
) -> AuditResult:
    """Audit one photo: the threat matrix (each condition x each model), the pixel gradient
    under each gradient condition, and the sanity checks.

    `true_label` (a label, or its index) defaults to undefended CLIP's clean prediction.
    `eps` is in [0, 1] pixel units (L-inf 4/255). Gradient conditions run PGD (L-inf) or
    PGD-L2 with `steps` steps; Square gets `square_queries` queries. `eot` gradients are
    averaged per step for the models whose predictions turn out random (EOT). `conditions` /
    `checks` pick subsets (None: all). `on_progress(done, total, stage)` is called after every
    model query; raising in it aborts the audit. `attack_resolution` 'model' attacks the
    model-size pixels (the playground's), 'native' the photo's own pixels, resized inside the
    attacked model; None picks native for a photo smaller than the model's input. `thorough`
    runs the checklist checks' expensive settings in full (every rung of the eps ladder,
    restarts; see checklist_runs). `release_precision` ("emulated" or "float16"; None: emulated
    on CPU, float16 on CUDA) is how the `release` condition's float16 model runs
    (docs/release-precision.md).
    """
    resolution = check_attack_resolution(attack_resolution)
    check_checks_runnable(checks, conditions)
    audit = _Audit(
        playground, labels, eps, norm, steps, defenses, defense_settings or {}, seed,
        check_conditions(conditions), pick_names(checks, list(CHECKS), "check"),
        square_queries, eot, true_label, thorough, release_precision,
    )  # fmt: skip
    with remembering_encodings():  # repeated encodings run once (see encoding_memo)
        return audit.run(image, on_progress, resolution)


def _check_count(name: str, value: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InputError(f"{name} must be an integer from 1 to {high}, got {value!r}.")
    return value


class _Audit(ChecklistRuns):
    """One audit's settings and the state shared between its stages."""

    def __init__(
        self,
        playground: Playground,
        labels: str | Sequence[str],
        eps: float,
        norm: str,
        steps: int,
        defenses: Iterable[str] | str,
        defense_settings: Mapping[str, Mapping],
        seed: int,
        conditions: list[str],
        checks: list[str],
        square_queries: int,
        eot: int,
        true_label: str | int | None,
        thorough: bool = False,
        release_precision: str | None = None,
    ) -> None:
        if norm not in ("linf", "l2"):
            raise InputError(f"norm must be 'linf' or 'l2', got {norm!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise InputError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}.")
        self.eot = _check_count("eot", eot, MAX_EOT_SAMPLES)
        self._init_checklist(thorough)
        self.attack = gradient_attack(norm, eps, steps)  # validates eps and steps
        try:  # and EOT: refused here, not once a model turns out random
            gradient_attack(norm, eps, steps, self.eot)
        except InputError as error:
            raise InputError(f"{error} In the audit: eot 1, or norm linf.") from None
        if "square" in conditions:
            square_attack(norm, eps, square_queries)  # validates the query budget
        self.playground, self.backbone = playground, playground.backbone
        self.release_precision = check_release_precision(release_precision, self.backbone.device)
        self.eps, self.norm, self.steps, self.seed = eps, norm, steps, seed
        self.conditions, self.checks, self.square_queries = conditions, checks, square_queries
        self.labels, self.notices = parse_labels(labels)
        if any(condition != "clean" for condition in conditions):  # an attack will run
            check_classes(self.attack, len(self.labels))
        given = true_label is not None and true_label != ""
        self.given_y = label_index(self.labels, true_label) if given else None
        # every column's backbone, and its defence's settings, before any class text is encoded
        columns = parse_columns(defenses, playground.home)
        self.served = serve_columns(playground, columns, self.labels, defense_settings)
        self.purifiers: dict[str, Purifier] = {
            name: served.purifier for name, served in self.served.items() if served.purifier
        }
        self.classifier: ZeroShotClassifier = self.served[UNDEFENDED].classifier
        self.models = {UNDEFENDED: column_title(UNDEFENDED)} | {
            name: column_title(name) for name in self.served if name != UNDEFENDED
        }
        self.encoded: dict[tuple[Key, int], torch.Tensor] = {}  # other backbones' embeddings
        self.images: dict[Key, torch.Tensor] = {}
        self.modules: dict[Key, nn.Module] = {}
        self.embeddings: dict[Key, torch.Tensor] = {}
        self.model_eot: dict[str, int] = dict.fromkeys(self.models, 1)
        self.stochastic: dict[str, bool] = {}  # per model, from the randomness stage
        self.rounding: list[dict] = []  # one entry per crafted image (see _craft)
        self.clean_logits: dict[str, torch.Tensor] = {}
        self.autograd_calls: dict[str, int] = {}

    # ---- the run ---------------------------------------------------------------------------
    def run(
        self,
        image: Image.Image,
        on_progress: ProgressCallback | None,
        resolution: str | None = "model",
    ) -> AuditResult:
        timer = Timer(self.backbone.device)
        if self.backbone.info.random_weights:
            self.notices.append("random weights: the predictions are meaningless.")
        unfed = unfed_checks(self.checks, self.conditions)
        if unfed:
            self.notices.append(
                "checks not run, their conditions are not in this audit: "
                + "; ".join(f"{check} (needs {need})" for check, need in unfed.items())
                + "."
            )
        slow = self.backbone.device.type == "cpu" and self.release_precision == "float16"
        if "release" in self.conditions and slow:
            self.notices.append(
                "'as released' runs the model in float16, which CPUs run slowly (ViT-B-32: "
                "~30x a float32 gradient, 5-16 s each): this audit takes minutes on CPU; "
                "release precision 'emulated' (the default on CPU) is quick."
            )
        y = self.given_y
        pixels = self._pixels(image, resolution)
        if "square" in self.conditions:  # refused before anything is encoded
            check_pixel_shape(
                square_attack(self.norm, self.eps, self.square_queries), *pixels.shape[-2:]
            )
        with timer("clean"), torch.no_grad():
            self.images[("clean", UNDEFENDED)] = pixels
            self.embeddings[("clean", UNDEFENDED)] = self._encode(pixels)
            if y is None:
                clean_z = self.embeddings[("clean", UNDEFENDED)]
                y = int(self.classifier.logits_from_embeddings(clean_z).argmax())
        self.y = torch.tensor([y], device=pixels.device)
        with timer("randomness"):
            differences = self._randomness(pixels)
        for model, difference in differences.items():
            self.stochastic[model] = difference > audit_checks.LOGIT_TOLERANCE
            if self.stochastic[model]:
                self.model_eot[model] = self.eot

        progress = Progress(self._planned_queries(), on_progress)
        progress.done = 1 + len(self.models)  # the clean pass and the randomness draws
        progress.report(progress.done, "clean")
        gradients: dict[Key, torch.Tensor] = {}
        if any(c in GRADIENT_CONDITIONS for c in self.conditions):
            with timer("gradients"):
                gradients = self._gradients(pixels, progress)
        matrix = []
        for condition in self.conditions:
            with timer(condition):
                matrix += self._condition(condition, pixels, progress)
        single = {}
        if "full" in self.conditions and "single_step_vs_iterative" in self.checks:
            with timer("single_step"):
                single = self._single_step(pixels, progress)
        self._checklist_stages(pixels, progress, timer, gradients)
        with timer("checks"):
            stats = self._gradient_stats(gradients)
            found = self._checks(matrix, stats, differences, single, self._sweeps(matrix))
        return AuditResult(
            labels=self.labels,
            true_label=self.labels[y],
            models=self.models,
            matrix=matrix,
            gradients=stats,
            checks=found,
            settings=self._settings(y),
            timings_ms=timer.finish(),
            notices=self.notices,
            rounding=self.rounding,
        )

    def _planned_queries(self) -> int:
        """Model queries of the whole audit (the eps sweep at its longest)."""
        total = 1 + len(self.models)
        gradient_keys = self._gradient_keys()
        total += sum(self.model_eot[model] for _, model in gradient_keys)
        for key in self._attack_keys():
            total += self._attack_budget(key) + 1  # + its evaluation
        if "full" in self.conditions and "single_step_vs_iterative" in self.checks:
            total += sum(
                single_step_attack(self.norm, self.eps, self.model_eot[m]).estimated_queries(
                    len(self.labels)
                )
                + 1
                for m in self.models
            )
        return total + self._checklist_budget()

    def _attack_keys(self) -> list[Key]:
        return list(
            dict.fromkeys(
                attack_key(condition, model)
                for condition in self.conditions
                if condition != "clean"
                for model in self.models
            )
        )

    def _gradient_keys(self) -> list[Key]:
        used = [c for c in self.conditions if c in GRADIENT_CONDITIONS]
        if not used:
            return []
        return list(dict.fromkeys(attack_key(c, m) for c in [*used, "full"] for m in self.models))

    def _attack_budget(self, key: Key) -> int:
        return self._config(*key).estimated_queries(len(self.labels))

    # ---- stages ----------------------------------------------------------------------------
    def _randomness(self, pixels: torch.Tensor) -> dict[str, float]:
        """Largest logit change between two forwards of the clean photo with different draws
        (a second encoding, and a second purification per defence); the first forward's
        logits and autograd calls are kept for the softmax and optimisation checks."""
        first = {id(s.backbone): s.name for s in self.served.values()}  # one per backbone
        with torch.no_grad(), fresh_encodings():  # a second forward, not the first one again
            again = {backbone: self._encode(pixels, name) for backbone, name in first.items()}
        differences = {}
        for model in self.models:
            clean = self._embedding(model, ("clean", UNDEFENDED))
            with AutogradCounter() as counter:  # the inference-time-optimisation probe
                first = self._logits(
                    model, clean, derive_seed(self.seed, "evaluate", "clean", model)
                )
            self.clean_logits[model], self.autograd_calls[model] = first, counter.calls
            second_z = again[id(self.served[model].backbone)]
            second = self._logits(model, second_z, derive_seed(self.seed, "randomness", model))
            differences[model] = float((first - second).abs().max())
        return differences

    def _module(self, key: Key) -> nn.Module:
        """The module the attack of `key` queries (and differentiates)."""
        if key not in self.modules:
            condition, model = key
            threat = CONDITIONS[condition].threat or "transfer"
            self.modules[key] = self.served[model].attacked(
                threat, self.pixels, resize_input=True, release_precision=self.release_precision
            )
        return self.modules[key]

    def _gradients(self, pixels: torch.Tensor, progress: Progress) -> dict[Key, torch.Tensor]:
        gradients = {}
        for key in self._gradient_keys():
            model = key[1]
            samples = self.model_eot[model]
            with progress.stage("gradients", samples) as on_query:
                # One seed per model: every threat sees the same random draws.
                gradients[key] = pixel_gradient(
                    self._module(key),
                    pixels,
                    self.y,
                    derive_seed(self.seed, "gradient", model),
                    samples,
                )
                on_query(samples)
        return gradients

    def _condition(self, condition: str, pixels: torch.Tensor, progress: Progress) -> list[Cell]:
        cells = []
        for model in self.models:
            key = ("clean", UNDEFENDED) if condition == "clean" else attack_key(condition, model)
            if key not in self.images:
                config = self._config(*key)
                self._craft(key, pixels, progress, condition, config, self._traced(key[0]))
            z = self._embedding(model, key)
            probs = self._logits(
                model, z, derive_seed(self.seed, "evaluate", condition, model)
            ).softmax(dim=-1)[0]
            best = int(probs.argmax())
            cells.append(
                Cell(condition, model, self.labels[best], float(probs[best]), best == int(self.y))
            )
        return cells

    def _craft(
        self,
        key: Key,
        pixels: torch.Tensor,
        progress: Progress,
        stage: str,
        config: AttackConfig,
        trace: bool = False,
    ) -> None:
        """Run `config` against the module of `key`, round to 8 bits inside the ball (with a
        lattice re-attack where rounding undid a gradient attack; recorded in `rounding`),
        and encode the image once (every model evaluated on it reuses the embedding). `trace`
        records the attack's loss at every query and at its end (loss_progress)."""
        budget = config.estimated_queries(len(self.labels))
        module = self._recorder(key) if trace else self._module(key)
        with progress.stage(stage, budget) as on_query:
            raw = craft_attack(
                module,
                pixels,
                self.y,
                config,
                derive_seed(self.seed, "attack", *key),
                len(self.labels),
                on_query=on_query,
                stochastic=self.stochastic.get(key[1]),  # measured once: no probe per attack
            )
        if trace:
            self._finish_trace(key, module, raw, progress, stage)
        with seeded(derive_seed(self.seed, "lattice", *key)):
            lattice = round_attack(self._module(key), pixels, raw, self.y, config)
        self.rounding.append({"attack": key[0], "model": key[1], **lattice.image(0)})
        self.images[key] = lattice.adversarial
        with progress.stage(stage, 1), torch.no_grad():  # on the attacked model's backbone
            self._embedding(key[1], key)

    def _pixels(self, image: Image.Image, resolution: str | None) -> torch.Tensor:
        """(1, 3, H, W): the pixels the attacks perturb (see run_audit's attack_resolution),
        with the resolution and their size kept for the settings."""
        if resolution is None:
            size = normalize_image(image).size  # upright, before any resize
            resolution = "native" if upsampled(size, self.backbone.image_size) else "model"
        pixels = attack_pixels(self.backbone, image, resolution).unsqueeze(0)
        self.resolution, self.size = resolution, (pixels.shape[-1], pixels.shape[-2])
        self.pixels = pixels
        return pixels

    def _encode(self, pixels: torch.Tensor, model: str = UNDEFENDED) -> torch.Tensor:
        """Embeddings of pixels of any size on `model`'s backbone, resized as the attacked
        modules resize them."""
        return self.served[model].encode(pixels)

    def _embedding(self, model: str, key: Key) -> torch.Tensor:
        """The embedding of the image of `key` on `model`'s backbone (encoded once)."""
        backbone = self.served[model].backbone
        store = self.embeddings if backbone is self.backbone else self.encoded
        index = key if backbone is self.backbone else (key, id(backbone))
        if index not in store:
            with torch.no_grad():
                store[index] = self._encode(self.images[key], model)
        return store[index]

    def _config(self, condition: str, model: str) -> AttackConfig:
        if condition == "noise":
            return noise_attack(self.norm, self.eps)
        if condition == "square":
            return square_attack(self.norm, self.eps, self.square_queries)
        return gradient_attack(self.norm, self.eps, self.steps, self.model_eot[model])

    def _single_step(self, pixels: torch.Tensor, progress: Progress) -> dict[str, bool]:
        """Whether one exact-gradient step (FGSM) fools each model."""
        fooled = {}
        for model in self.models:
            config = single_step_attack(self.norm, self.eps, self.model_eot[model])
            key = ("single_step", model)
            self.modules[key] = self._module(attack_key("full", model))
            self._craft(key, pixels, progress, "single_step", config)
            fooled[model] = not self._correct(model, key)
        return fooled

    # ---- measurements -> checks ------------------------------------------------------------
    def _logits(self, model: str, z: torch.Tensor, seed: int) -> torch.Tensor:
        """The served model's logits for embedding `z` (fp32, seeded draws)."""
        purifier = self.purifiers.get(model)
        with torch.no_grad(), seeded(seed):
            purified = z if purifier is None else purifier(z)
            return self.served[model].classifier.logits_from_embeddings(purified).float()

    def _correct(self, model: str, key: Key) -> bool:
        seed = derive_seed(self.seed, "evaluate", key[0], model)
        return int(self._logits(model, self._embedding(model, key), seed).argmax()) == int(self.y)

    def _gradient_stats(self, gradients: dict[Key, torch.Tensor]) -> list[GradientStats]:
        if not gradients:
            return []
        seen = pixels_seen(self.backbone.to_model_size, next(iter(gradients.values())))
        return [
            compare(
                condition,
                model,
                gradients[attack_key(condition, model)],
                gradients[attack_key("full", model)],
                seen,
            )
            for condition in self.conditions
            if condition in GRADIENT_CONDITIONS
            for model in self.models
        ]

    def _checks(
        self,
        matrix: list[Cell],
        stats: list[GradientStats],
        differences: dict[str, float],
        single: dict[str, bool],
        sweeps: dict[str, list[tuple[float, bool]]],
    ) -> list[Check]:
        found = self._gradient_checks(stats)
        correct = {(cell.condition, cell.model): cell.correct for cell in matrix}
        for model in self.models:
            found += self._per_model_checks(model, correct, differences, single, sweeps)
        return found + self._checklist_checks(matrix, differences, stats)

    def _gradient_checks(self, stats: list[GradientStats]) -> list[Check]:
        """zero_gradients and gradient_direction per measured gradient, bpda_validity per
        defence."""
        found: list[Check] = []
        for row in stats:
            same_as_full = attack_key(row.condition, row.model) == attack_key("full", row.model)
            title = self._subject(row.condition, row.model)
            if (
                "zero_gradients" in self.checks
                and row.condition != "transfer"
                and (row.condition == "full" or not same_as_full)
            ):
                found.append(audit_checks.zero_gradients(row, title, self.norm))
            if "gradient_direction" in self.checks and not same_as_full:
                found.append(audit_checks.gradient_direction(row, title, self.norm))
        if "bpda_validity" in self.checks and "bpda" in self.conditions:
            for model, purifier in self.purifiers.items():
                clean = self._embedding(model, ("clean", UNDEFENDED))
                seed = derive_seed(self.seed, "evaluate", "clean", model)
                with torch.no_grad(), seeded(seed):
                    (turn,) = audit_checks.angles_between(purifier(clean), clean)
                bpda = next(r for r in stats if (r.condition, r.model) == ("bpda", model))
                found.append(audit_checks.bpda_validity(bpda, self.models[model], turn, self.norm))
        return found

    def _per_model_checks(
        self,
        model: str,
        correct: dict[Key, bool],
        differences: dict[str, float],
        single: dict[str, bool],
        sweeps: dict[str, list[tuple[float, bool]]],
    ) -> list[Check]:
        """The per-model checks (controls, randomness, softmax output, optimisation)."""
        titles = {name: c.title for name, c in CONDITIONS.items()}
        title, clean_ok, found = self.models[model], correct[("clean", model)], []
        fooled = {c: not correct[(c, model)] for c in self.conditions if c in GRADIENT_CONDITIONS}
        white_box = {c: f for c, f in fooled.items() if c in WHITE_BOX_CONDITIONS}
        if "white_box_vs_black_box" in self.checks and "square" in self.conditions and white_box:
            square = not correct[("square", model)]
            found.append(
                audit_checks.white_box_vs_black_box(
                    model, title, clean_ok, square, white_box, titles, self.square_queries
                )
            )
        if "noise_control" in self.checks and "noise" in self.conditions and fooled:
            noise = not correct[("noise", model)]
            found.append(audit_checks.noise_control(model, title, clean_ok, noise, fooled, titles))
        if single:
            found.append(
                audit_checks.single_step_vs_iterative(
                    model, title, clean_ok, single[model], fooled["full"]
                )
            )
        if sweeps:
            found.append(audit_checks.eps_sweep(model, title, clean_ok, sweeps[model], self.norm))
        if "randomness" in self.checks:
            found.append(audit_checks.randomness(model, title, differences[model], self.eot))
        if "softmax_output" in self.checks:
            found.append(audit_checks.softmax_output(model, title, self.clean_logits[model]))
        if "inference_time_optimisation" in self.checks:
            purifier = self.purifiers.get(model)
            steps = 0 if purifier is None else purifier.steps
            calls, full = self.autograd_calls[model], "full" in self.conditions
            found.append(audit_checks.inference_time_optimisation(model, title, calls, steps, full))
        return found

    def _subject(self, condition: str, model: str) -> str:
        """How a check names (condition, model): 'as released' for the first defence,
        'as released (CLIPure-Diff)' for others, 'undefended CLIP, full gradient'."""
        title = CONDITIONS[condition].title
        if model == UNDEFENDED:
            return f"{self.models[model]}, {title}"
        if len(self.purifiers) > 1:
            return f"{title} ({self.models[model]})"
        return title

    def _settings(self, y: int) -> dict:
        info = self.backbone.info
        templates = self.playground.templates
        settings = {
            "model": info.name,
            "pretrained": info.pretrained,
            "weights_id": info.weights_id,
            "weights": info.weights,
            "random_weights": info.random_weights,
            "device": info.device,
            "precision": info.precision,
            "templates": templates if isinstance(templates, str) else list(templates),
            "labels": self.labels,
            "true_label": self.labels[y],
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "gradient_attack": self.attack.method,
            "attack_resolution": self.resolution,
            "attack_image_size": {"width": self.size[0], "height": self.size[1]},
            "square_queries": self.square_queries if "square" in self.conditions else None,
            "eot": self.eot,
            "eot_models": [m for m, samples in self.model_eot.items() if samples > 1],
            "eps_sweep": self._ladder() if "eps_sweep" in self.checks else [],
            "checklist": self._checklist_settings(),
            "defenses": {name: p.settings() for name, p in self.purifiers.items()},
            "columns": {name: served.describe() for name, served in self.served.items()},
            "conditions": self.conditions,
            "release_precision": self.release_precision if "release" in self.conditions else None,
            "checks": self.checks,
            "seed": self.seed,
            "versions": {
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
                "torchattacks": torchattacks.__version__,
            },
        }
        if self.norm == "linf":
            settings["eps_255"] = self.eps * 255
        return settings
