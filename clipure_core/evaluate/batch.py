"""One batch on the device: clean predictions, then attacks under every condition (eps,
threat, attack, attack seed), with encoder forwards shared wherever several models are
evaluated on the same image.

Threat semantics are those of `Playground.run`: under `transfer` every model sees the image
crafted against the undefended classifier; under an adaptive threat the undefended model
keeps its white-box image and each defence is attacked through its own purifier. The
undefended model's attack does not depend on the threat, so it is crafted once per (eps,
attack, seed).

A stochastic model is judged on the worst of its evaluation draws: an attacked image counts
as classified correctly only if every draw is right (`draws`, per model; draw 0 is the one a
single-draw run makes, and the clean prediction).

Crafted images are rounded to 8 bits by `round_onto_lattice`: per condition, the model an
image was crafted against has `undone_by_rounding` and `repaired` per image (None for a model
evaluated on another model's image, i.e. a defence under transfer).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch

from ..attacks import AttackConfig, craft_attack
from ..classifier import ZeroShotClassifier
from ..lattice import LatticeResult, round_attack
from ..pixels import LEVELS
from ..purifiers import Purifier
from ..seeding import derive_seed, seeded
from ..threats import attacked_model
from .config import UNDEFENDED, Condition
from .protocols import EOT_METHODS

STAGES = ("clean", "attack", "evaluate")
__all__ = ["STAGES", "BatchEvaluator", "Condition", "attack_seed", "image_source"]


def image_source(model: str, threat: str) -> str:
    """The model whose adversarial image `model` is evaluated on under `threat`."""
    return UNDEFENDED if model == UNDEFENDED or threat == "transfer" else model


class _Stages:
    """Wall seconds per stage on `device` (CUDA is synchronised at stage boundaries)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def attack_seed(seed: int, seed_index: int) -> int:
    """The attack seed of a batch (seeded with `seed`) for the run's attack seed `seed_index`
    (index 0 is `seed` itself, as in a run with one attack seed)."""
    return seed if seed_index == 0 else derive_seed(seed, "attack seed", str(seed_index))


class BatchEvaluator:
    """Evaluates batches of prepared pixels for every model and condition of a run.

    Pixels may be model-size or any other size (`--attack-resolution native`): attacks then
    perturb them as given, and every encoding, clean or adversarial, resizes them first
    exactly as the attacked module does, and perturbation sizes are measured in them.

    Batch i is a pure function of (pixels, labels, seed + i): attacks are seeded with it,
    and the purifiers' draws with seeds derived from it, whichever process runs the batch.
    `attacks` gives the attack per eps for conditions without their own; `eot` overrides the
    EOT samples of the attack crafted against each model; `draws` is each model's number of
    evaluation draws (default 1).
    """

    def __init__(
        self,
        classifier: ZeroShotClassifier,
        purifiers: Mapping[str, Purifier],
        models: Sequence[str],
        conditions: Sequence[Condition],
        attacks: Mapping[float, AttackConfig],
        seed: int,
        eot: Mapping[str, int] | None = None,
        draws: Mapping[str, int] | None = None,
        classifiers: Mapping[str, ZeroShotClassifier] | None = None,
        release_precision: str | None = None,
    ) -> None:
        self.classifiers = dict(classifiers or {})  # models on another backbone
        missing = [
            name
            for name in models
            if name != UNDEFENDED and name not in purifiers and name not in self.classifiers
        ]
        if missing:
            raise ValueError(f"no purifier for {', '.join(missing)}.")
        self.classifier = classifier
        self.purifiers = dict(purifiers)
        self.models = list(models)
        self.conditions = list(conditions)
        self.attacks = dict(attacks)
        self.seed = seed
        self.eot = dict(eot or {})
        self.draws = {model: 1 for model in self.models} | dict(draws or {})
        self.release_precision = release_precision

    @property
    def device(self) -> torch.device:
        return self.classifier.backbone.device

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor, batch_index: int) -> dict:
        """Predictions (class indices) and perturbation sizes of one batch, and its timings."""
        stages = _Stages(self.device)
        seed = self.seed + batch_index
        with stages("clean"):
            clean_z: dict[int, torch.Tensor] = {}  # per backbone
            clean = {
                model: self._predict(model, self._encoded(pixels, model, clean_z), seed, "clean")[0]
                for model in self.models
            }
        adversarial, cache, cached_eps = [], {}, None
        for condition in self.conditions:
            if condition.eps != cached_eps:  # images of another eps are not reused
                cache, cached_eps = {}, condition.eps
            adversarial.append(self._condition(pixels, labels, condition, seed, stages, cache))
        return {"clean": clean, "adversarial": adversarial, "seconds": stages.seconds}

    def _condition(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        condition: Condition,
        seed: int,
        stages: _Stages,
        cache: dict,
    ) -> dict:
        """Adversarial predictions of every model under one condition; `cache` keeps crafted
        images and predictions that later conditions of the batch can reuse."""
        result: dict = {"eps": condition.eps, "threat": condition.threat}
        if condition.attack is not None:
            result |= {"attack": condition.attack_name, "seed_index": condition.seed_index}
        predictions, correct_draws, linf, l2, undone, repaired = {}, {}, {}, {}, {}, {}
        for model in self.models:
            source = image_source(model, condition.threat)
            threat = condition.threat if source != UNDEFENDED else "*"
            key = (condition.eps, source, threat)
            if not self._run_attack(condition):  # the run's attack keeps its original keys
                key += (condition.attack_name, condition.seed_index)
            if key not in cache:
                cache[key] = self._craft(pixels, labels, condition, source, seed, stages)
            adversarial, z, lattice = cache[key]
            if self._head(model).backbone is not self._head(source).backbone:
                z = self._encoded(adversarial, model, cache.setdefault((key, "z"), {}))
            if (key, model) not in cache:
                with stages("evaluate"):
                    draws = self._predict(model, z, seed, repr(key))
                cache[(key, model)] = _worst(draws, labels.tolist())
            predictions[model], correct_draws[model] = cache[(key, model)]
            linf[model], l2[model] = _perturbation(pixels, adversarial)
            undone[model], repaired[model] = _rounding(lattice, model == source, len(labels))
        result |= {"predictions": predictions, "linf": linf, "l2": l2}
        result |= {"undone_by_rounding": undone, "repaired": repaired}
        return result | {"correct_draws": correct_draws, "draws": dict(self.draws)}

    def _run_attack(self, condition: Condition) -> bool:
        """Whether `condition` is the run's attack for its eps with the first attack seed
        (its crafted images and evaluation draws then keep the seeds they always had)."""
        same = condition.attack is None or condition.attack == self.attacks.get(condition.eps)
        return same and condition.seed_index == 0

    def _craft(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        condition: Condition,
        source: str,
        seed: int,
        stages: _Stages,
    ) -> tuple[torch.Tensor, torch.Tensor, LatticeResult]:
        """The 8-bit adversarial image of `source` under `condition` (re-attacked on the 8-bit
        lattice where rounding undid the attack), its embedding, and what rounding did."""
        config = condition.attack or self.attacks[condition.eps]
        if source in self.eot and config.method in EOT_METHODS:
            config = replace(config, eot_samples=self.eot[source])
        target = attacked_model(
            self._head(source),
            self.purifiers.get(source),
            condition.threat,
            resize_input=True,
            release_precision=self.release_precision,
        )
        seed = attack_seed(seed, condition.seed_index)
        with stages("attack"):
            raw = craft_attack(
                target, pixels, labels, config, seed, num_classes=len(self.classifier.labels)
            )
            with seeded(derive_seed(seed, "lattice", source)):
                lattice = round_attack(target, pixels, raw, labels, config)
        with stages("evaluate"):
            z = self._encode(lattice.adversarial, source)
        return lattice.adversarial, z, lattice

    def _head(self, model: str) -> ZeroShotClassifier:
        """The zero-shot head of `model`, on its backbone."""
        return self.classifiers.get(model, self.classifier)

    def _encoded(self, pixels: torch.Tensor, model: str, known: dict[int, torch.Tensor]):
        """`pixels` encoded on `model`'s backbone, once per backbone (`known` keeps them)."""
        backbone = id(self._head(model).backbone)
        if backbone not in known:
            known[backbone] = self._encode(pixels, model)
        return known[backbone]

    def _encode(self, pixels: torch.Tensor, model: str = UNDEFENDED) -> torch.Tensor:
        backbone = self._head(model).backbone
        with torch.inference_mode():  # the attacked module's resize, then the encoder
            z = backbone.encode_image(backbone.to_model_size(pixels))
        return z.clone()  # a normal tensor: purifiers may differentiate internally

    @torch.no_grad()
    def _predict(self, model: str, z: torch.Tensor, seed: int, image: str) -> list[list[int]]:
        """Class indices `model` predicts for embeddings `z`, one list per evaluation draw. A
        stochastic purifier draws from its own seeds (never the attack's draws), and leaves
        the global RNG as it was."""
        head = self._head(model)
        if model not in self.purifiers:  # undefended, on its backbone
            return [head.logits_from_embeddings(z).argmax(dim=-1).tolist()]
        draws = []
        for draw in range(self.draws[model]):
            tag = image if draw == 0 else f"{image} draw {draw}"
            with seeded(derive_seed(seed, "purify", model, tag)):
                purified = self.purifiers[model](z)
            draws.append(head.logits_from_embeddings(purified).argmax(dim=-1).tolist())
        return draws


def _worst(draws: list[list[int]], targets: list[int]) -> tuple[list[int], list[int]]:
    """Per image: the prediction robustness is judged on (the first wrong draw, else the
    right class) and how many draws were right."""
    worst, correct = [], []
    for j, target in enumerate(targets):
        predictions = [draw[j] for draw in draws]
        wrong = [prediction for prediction in predictions if prediction != target]
        worst.append(wrong[0] if wrong else target)
        correct.append(len(predictions) - len(wrong))
    return worst, correct


def _rounding(lattice: LatticeResult, attacked: bool, count: int) -> tuple[list, list]:
    """Per image: undone by rounding, and repaired (None when the re-attack was not tried),
    for the model the image was crafted against; None for every other model."""
    if not attacked:
        return [None] * count, [None] * count
    repaired = lattice.repaired if lattice.attempted else [None] * count
    return lattice.undone, repaired


def _perturbation(clean: torch.Tensor, adversarial: torch.Tensor) -> tuple[list, list]:
    """Per image L-inf and L2 size of an 8-bit perturbation in [0, 1] pixel units, computed
    from whole 8-bit levels in float64 (so that 4 levels read exactly 4/255)."""
    levels = (adversarial.double() * LEVELS).round() - (clean.double() * LEVELS).round()
    levels = levels.flatten(1)
    return (levels.abs().amax(dim=1) / LEVELS).tolist(), (levels.norm(dim=1) / LEVELS).tolist()
