"""The release protocol: the authors' evaluation loop, reproduced on our engine.

The release ran AutoAttack (`version='custom'`, ['apgd-ce', 'apgd-t']) through
`run_standard_evaluation(bs=2)`: clean predictions on consecutive pairs of images; then
APGD-CE on the images still classified correctly, taken in consecutive pairs in dataset
order; then APGD-T on those still correct after that, paired again the same way. With the
purifier batch-coupled, a prediction depends on the image it is paired with, so the pairing
is part of the result. Each stage is a list of pairs that depends on the previous stage's
outcome over the whole subset; every finished pair is stored (OUT/partial/STAGE/), so a run
resumes after a crash and shards each stage across torchrun ranks.

As in the release, adversarial images are not rounded to 8 bits, an image keeps the first
attack that fools it, and an image no attack fools keeps its clean pixels. What 8-bit
rounding would have done is recorded, not applied: per image, whether rounding the float
adversarial inside the eps-ball would make the release's model right again
(`undone_by_rounding`); no lattice re-attack runs (`repaired` is None).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import RELEASE_APGD_RESTARTS, AttackConfig, craft_attack
from ..classifier import ZeroShotClassifier
from ..lattice import round_attack
from ..purifiers import Purifier
from ..seeding import derive_seed, seeded
from ..threats import attacked_model
from .config import EvalConfig
from .distributed import Cluster
from .protocols import RELEASE_STAGES
from .store import PartialStore
from .subset import assign

CLEAN_STAGE = "clean"


def release_pairs(positions: Sequence[int], size: int) -> list[list[int]]:
    """`positions` in order, cut into consecutive groups of `size` (the last may be shorter):
    how the release's AutoAttack batches the images a stage attacks."""
    ordered = list(positions)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def stage_attack(config: EvalConfig, eps: float, stage: str) -> AttackConfig:
    """The attack of one stage: APGD-CE with the release's 5 restarts, or APGD-T (9 targets,
    one restart); `steps` iterations (100 in the release)."""
    restarts = RELEASE_APGD_RESTARTS if stage == "apgd-ce" else 1
    return AttackConfig(
        stage, config.norm, eps * config.eps_scale, config.resolved_steps, restarts=restarts
    )


class ReleaseEvaluator:
    """Predictions and attacks of one group of images through the release's model: the
    module `attacked_model(classifier, purifier, threat)` is both what the attack
    differentiates and what predicts, called on the whole group at once (on pixels of any
    size: CIFAR's are resized inside it, as the release resized them)."""

    def __init__(
        self,
        classifier: ZeroShotClassifier,
        purifiers: Mapping[str, Purifier],
        threat: str,
        seed: int,
        release_precision: str | None = None,
    ) -> None:
        self.classifier = classifier
        self.purifiers = dict(purifiers)
        self.threat = threat
        self.seed = seed
        self.release_precision = release_precision
        self._modules: dict[str, nn.Module] = {}

    def module(self, model: str) -> nn.Module:
        if model not in self._modules:
            purifier = self.purifiers.get(model)
            self._modules[model] = attacked_model(
                self.classifier,
                purifier,
                self.threat,
                resize_input=True,
                release_precision=self.release_precision,
            )
        return self._modules[model]

    @torch.no_grad()
    def predict(self, model: str, pixels: torch.Tensor, tag: str) -> list[int]:
        """Class indices for the group `pixels` (a stochastic purifier draws from a seed of
        its own, derived from `tag`)."""
        with seeded(derive_seed(self.seed, "release predict", model, tag)):
            return self.module(model)(pixels).argmax(dim=-1).tolist()

    def attack(
        self,
        model: str,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        config: AttackConfig,
        tag: str,
    ) -> dict:
        """Attack the group; its predictions on the result, perturbation sizes in [0, 1]
        pixel units (not rounded to 8 bits, as in the release), and per image whether 8-bit
        rounding would undo the attack (judged, not applied)."""
        seed = derive_seed(self.seed, "release attack", model, tag)
        adversarial = craft_attack(
            self.module(model),
            pixels,
            labels,
            config,
            seed,
            len(self.classifier.labels),
            release=True,  # torchattacks' return rule, as the release's AutoAttack
        )
        with seeded(derive_seed(self.seed, "release lattice", model, tag)):
            rounding = round_attack(
                self.module(model), pixels, adversarial, labels, config, repair=False
            )
        delta = (adversarial - pixels).detach().double().flatten(1)
        return {
            "predictions": self.predict(model, adversarial, tag),
            "linf": delta.abs().amax(dim=1).tolist(),
            "l2": delta.norm(dim=1).tolist(),
            "undone_by_rounding": rounding.undone,
        }


@dataclass
class ReleaseProgress:
    """Pairs finished and known so far; `complete` when every stage is done."""

    finished: int = 0
    known: int = 0
    complete: bool = True


class ReleaseRun:
    """The staged loop over every (eps, stage, model), shared among the ranks of `cluster`.

    `load(positions)` gives prepared pixels and labels of subset positions; `budget` caps the
    pairs this invocation computes per rank (None: no cap).
    """

    def __init__(
        self,
        config: EvalConfig,
        evaluator: ReleaseEvaluator,
        cluster: Cluster,
        settings: dict,
        load: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
        on_pair: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.evaluator = evaluator
        self.cluster = cluster
        self.settings = settings
        self.load = load
        self.on_pair = on_pair
        self.budget = config.max_batches
        self.computed = 0
        self.progress = ReleaseProgress()

    def store(self, stage: str) -> PartialStore:
        return PartialStore(self.config.out, self.settings, stage)

    def run(self, count: int, models: Sequence[str]) -> dict | None:
        """Every stage in order; the per-stage records when all are done, else None."""
        size = self.config.batch_size
        clean_pairs = release_pairs(range(count), size)
        clean = self._stage(CLEAN_STAGE, clean_pairs, lambda pair, tag: self._clean(pair, models))
        if clean is None:
            return None
        targets = {
            p: t
            for record in clean
            for p, t in zip(record["positions"], record["targets"], strict=True)
        }
        correct = {
            model: still_right(clean, lambda record, m=model: record["predictions"][m], targets)
            for model in models
        }
        stages: dict[str, list[dict]] = {CLEAN_STAGE: clean}
        for eps in self.config.eps:
            for model in models:
                robust = correct[model]
                for attack in RELEASE_STAGES:
                    name = stage_name(eps, attack, model)
                    config = stage_attack(self.config, eps, attack)

                    def work(pair: list[int], tag: str, model=model, config=config) -> dict:
                        pixels, labels = self.load(pair)
                        return self.evaluator.attack(model, pixels, labels, config, tag)

                    records = self._stage(name, release_pairs(robust, size), work)
                    if records is None:
                        return None
                    stages[name] = records
                    robust = still_right(records, lambda record: record["predictions"], targets)
        return stages

    def _clean(self, pair: list[int], models: Sequence[str]) -> dict:
        pixels, labels = self.load(pair)
        tag = f"clean {pair[0]}"
        predictions = {model: self.evaluator.predict(model, pixels, tag) for model in models}
        return {"predictions": predictions, "targets": labels.tolist()}

    def _stage(
        self, name: str, pairs: list[list[int]], work: Callable[[list[int], str], dict]
    ) -> list[dict] | None:
        """Run (or resume) one stage; all its records (on every rank) once finished."""
        store = self.store(name)
        held = self.cluster.all_gather(_matching(store, pairs))
        pending = [index for index in range(len(pairs)) if index not in set().union(*held)]
        mine = assign(pending, self.cluster.rank, self.cluster.world_size)
        if self.budget is not None:
            mine = mine[: max(self.budget - self.computed, 0)]
        records = []
        for index in mine:
            started = time.perf_counter()
            result = work(pairs[index], f"{name} {index}")
            seconds = {
                "evaluate" if name == CLEAN_STAGE else "attack": time.perf_counter() - started
            }
            record = {"batch": index, "positions": pairs[index], **result, "seconds": seconds}
            store.write(record)
            records.append(record)
            self.computed += 1
            if self.on_pair is not None:
                self.on_pair(len(pairs[index]))
        stored = _matching(store, pairs)
        for part in self.cluster.all_gather(records):  # every rank needs the whole stage
            for record in part:
                if record["batch"] not in stored:
                    store.write(record)
        finished = _matching(store, pairs)
        self.progress.finished += len(finished)
        self.progress.known += len(pairs)
        if len(finished) < len(pairs):
            self.progress.complete = False
            return None
        return [store.read(index) for index in range(len(pairs))]


def _matching(store: PartialStore, pairs: list[list[int]]) -> set[int]:
    """Finished pairs of a stage whose stored images are the pairs planned now (a stage
    recomputed with another outcome re-pairs the next one: its old pairs do not count)."""
    return {
        index
        for index in store.done()
        if index < len(pairs) and store.read(index)["positions"] == pairs[index]
    }


def still_right(
    records: Sequence[dict], predictions: Callable[[dict], list[int]], targets: Mapping[int, int]
) -> list[int]:
    """The positions, in stage order, whose prediction in `records` is their target."""
    return [
        position
        for record in records
        for position, prediction in zip(record["positions"], predictions(record), strict=True)
        if prediction == targets[position]
    ]


def stage_name(eps: float, attack: str, model: str) -> str:
    return f"eps{eps:g}_{attack}_{model}"


def batch_records(
    stages: Mapping[str, list[dict]],
    eps_values: Sequence[float],
    models: Sequence[str],
    ids: Sequence[str],
    threat: str,
) -> list[dict]:
    """The staged results as the batch records the reports read: one per clean pair, the
    adversarial outcome of each image being that of the first stage that fooled it (else its
    clean pixels and the last prediction); `undone_by_rounding` is that stage's judgement
    (False for an image no stage fooled), `repaired` None (no re-attack)."""
    records = []
    owner: dict[int, dict] = {}
    for clean in stages[CLEAN_STAGE]:
        positions = clean["positions"]
        record = {
            "batch": clean["batch"],
            "positions": positions,
            "ids": [ids[p] for p in positions],
            "targets": clean["targets"],
            "clean": clean["predictions"],
            "adversarial": [],
            "seconds": {"evaluate": clean["seconds"].get("evaluate", 0.0), "attack": 0.0},
        }
        for eps in eps_values:
            record["adversarial"].append(
                {
                    "eps": eps,
                    "threat": threat,
                    "predictions": {m: list(clean["predictions"][m]) for m in models},
                    "linf": {m: [0.0] * len(positions) for m in models},
                    "l2": {m: [0.0] * len(positions) for m in models},
                    "undone_by_rounding": {m: [False] * len(positions) for m in models},
                    "repaired": {m: [None] * len(positions) for m in models},
                }
            )
        for p in positions:
            owner[p] = record
        records.append(record)
    for e, eps in enumerate(eps_values):
        for model in models:
            fooled: set[int] = set()
            for attack in RELEASE_STAGES:
                for result in stages[stage_name(eps, attack, model)]:
                    owner[result["positions"][0]]["seconds"]["attack"] += result["seconds"][
                        "attack"
                    ]
                    for j, p in enumerate(result["positions"]):
                        if p in fooled:
                            continue
                        record = owner[p]
                        k = record["positions"].index(p)
                        condition = record["adversarial"][e]
                        prediction = result["predictions"][j]
                        condition["predictions"][model][k] = prediction
                        if prediction != record["targets"][k]:
                            fooled.add(p)
                            condition["linf"][model][k] = result["linf"][j]
                            condition["l2"][model][k] = result["l2"][j]
                            undone = result.get("undone_by_rounding")  # older records: None
                            condition["undone_by_rounding"][model][k] = (
                                None if undone is None else undone[j]
                            )
    return records
