"""Run or resume an evaluation: plan the batches, share them among ranks, store each finished
batch, and let rank 0 merge them into the outputs.

Batch i always holds the same images and is attacked with seed + i, so its result does not
depend on which process runs it, on how many there are, or on earlier interruptions. The
release protocol runs in stages instead (release.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..attacks import check_pixel_shape
from ..backbone import Backbone
from ..classifier import ZeroShotClassifier
from ..columns import Column, check_fits
from ..loading import load_backbone
from ..purifiers import Purifier, build_purifier, check_defense
from ..release import check_release_precision
from ..resolution import Size, attack_pixels, default_attack_resolution, one_size
from ..text_embeddings import tqdm_progress
from .batch import BatchEvaluator
from .config import EvalConfig
from .data import EvalDataset, load_dataset
from .distributed import Cluster, start_cluster
from .notices import run_notices
from .randomness import is_stochastic
from .release import ReleaseEvaluator, ReleaseRun, batch_records
from .report import write_outputs
from .store import PartialStore
from .subset import assign, plan_batches, stratified_subset


@dataclass
class _Setup:
    """What every rank builds before the batch loop."""

    dataset: EvalDataset
    subset: list[int]
    backbone: Backbone
    classifier: ZeroShotClassifier
    purifiers: dict[str, Purifier]
    options: dict[str, dict]  # per defence, as resolved (e.g. the prior CLIPure-Diff found)
    stochastic: dict[str, bool]  # per model: do two forwards with other seeds differ?
    resolution: str  # the attack resolution: 'native' or 'model'
    attack_size: Size  # (width, height) of the pixels the attacks perturb
    notices: list[str] = field(default_factory=list)
    classifiers: dict[str, ZeroShotClassifier] = field(default_factory=dict)  # other backbones


def _settings_of(config: EvalConfig, column: Column) -> dict:
    """A column's defence settings: by its name, else by its defence's name."""
    settings = config.defense_settings
    return settings.get(column.name, settings.get(column.defense, {}))


@dataclass(frozen=True)
class Outcome:
    """How far a run got. `results` is the results.json document, on rank 0 of a complete
    run only."""

    finished_batches: int
    total_batches: int
    results: dict | None = None
    root: bool = True

    @property
    def complete(self) -> bool:
        return self.finished_batches == self.total_batches


def run_evaluation(config: EvalConfig, dataset: EvalDataset | None = None) -> Outcome:
    """Run (or resume) `config` in this process, as one rank of a torchrun world if there is
    one; rank 0 then writes the outputs once every batch is finished. `dataset` replaces
    `config.data` (synthetic or in-memory data)."""
    started = time.perf_counter()
    cluster, device = start_cluster(config.device)
    try:
        return _Run(config, cluster, device).execute(started, dataset)
    finally:
        cluster.close()


class _Run:
    def __init__(self, config: EvalConfig, cluster: Cluster, device: torch.device) -> None:
        self.config = config
        self.cluster = cluster
        self.device = device

    def execute(self, started: float, dataset: EvalDataset | None) -> Outcome:
        config, cluster = self.config, self.cluster
        # a resume with other flags is refused before any model work (the rest of the
        # settings, e.g. the weights' identity, is compared once the model is loaded)
        cluster.check_all(PartialStore(config.out, config.own_settings()).check_stored())
        setup = cluster.root_first(lambda: self._setup(dataset))
        settings = self._settings(setup)
        store = PartialStore(config.out, settings)
        cluster.check_all(store.check_settings())
        if config.protocol == "release":
            return self._execute_release(setup, settings, started)
        batches = plan_batches(len(setup.subset), config.batch_size)
        held = cluster.all_gather(store.done())
        pending = [index for index in range(len(batches)) if index not in set().union(*held)]
        shares = [
            assign(pending, rank, cluster.world_size)[: config.max_batches]
            for rank in range(cluster.world_size)
        ]
        finished = len(set().union(*held, *shares))
        loop_start = time.perf_counter()
        computed = self._loop(setup, store, batches, shares[cluster.rank])
        # Rank 0 gets the finished batches it does not hold (no shared disk is assumed).
        missing_at_root = (held[cluster.rank] | set(computed)) - held[0] - set(shares[0])
        gathered = cluster.gather(
            {
                "records": [store.read(index) for index in sorted(missing_at_root)],
                "images": sum(len(batches[index]) for index in computed),
                "batches": len(computed),
            }
        )
        self._keep(store, gathered)
        if not cluster.is_root or finished < len(batches):
            return Outcome(finished, len(batches), root=cluster.is_root)
        wall = time.perf_counter() - loop_start
        images = sum(part["images"] for part in gathered)
        invocation = {
            "processes": cluster.world_size,
            "batches": sum(part["batches"] for part in gathered),
            "images": images,
            "setup_s": loop_start - started,
            "wall_s": wall,
            "images_per_s": images / wall if images and wall > 0 else None,
        }
        records = [store.read(index) for index in range(len(batches))]
        results = write_outputs(config.out, settings, records, invocation, setup.notices)
        return Outcome(finished, len(batches), results)

    def _execute_release(self, setup: _Setup, settings: dict, started: float) -> Outcome:
        """The release protocol: its stages in order, then the same outputs as a batch run."""
        config, cluster = self.config, self.cluster
        evaluator = ReleaseEvaluator(
            setup.classifier,
            setup.purifiers,
            config.threats[0],
            config.seed,
            release_precision=self._release_precision(),
        )
        bar = self._bar(None, "release protocol (images clean, then attacked)")
        run = ReleaseRun(config, evaluator, cluster, settings, self._loader(setup), bar.update)
        loop_start = time.perf_counter()
        try:
            stages = run.run(len(setup.subset), config.models)
        finally:
            bar.close()
        progress = run.progress
        computed = sum(cluster.all_gather(run.computed))  # every rank takes part
        if not cluster.is_root or stages is None:
            return Outcome(progress.finished, progress.known, root=cluster.is_root)
        wall = time.perf_counter() - loop_start
        images = len(setup.subset)
        invocation = {
            "processes": cluster.world_size,
            "batches": computed,
            "images": images,
            "setup_s": loop_start - started,
            "wall_s": wall,
            "images_per_s": images / wall if wall > 0 else None,
        }
        ids = [setup.dataset.ids[item] for item in setup.subset]
        records = batch_records(stages, config.eps, config.models, ids, config.threats[0])
        results = write_outputs(config.out, settings, records, invocation, setup.notices)
        return Outcome(progress.finished, progress.known, results)

    def _loader(self, setup: _Setup):
        """positions -> (prepared pixels, labels) of those subset positions."""
        dataset, subset = setup.dataset, setup.subset

        def load(positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            items = [subset[position] for position in positions]
            pixels = torch.stack([self._pixels(setup, item) for item in items])
            labels = torch.tensor([dataset.targets[item] for item in items], device=self.device)
            return pixels, labels

        return load

    @staticmethod
    def _pixels(setup: _Setup, item: int) -> torch.Tensor:
        """Item `item` as the pixels the attacks perturb (at the run's attack resolution)."""
        return attack_pixels(setup.backbone, setup.dataset.image(item), setup.resolution)

    def _bar(self, total: int | None, description: str) -> tqdm:
        return tqdm(
            total=total,
            unit="img",
            unit_scale=self.cluster.world_size if self.cluster.distributed else False,
            desc=description,
            disable=not (self.config.progress and self.cluster.is_root),
            dynamic_ncols=True,
        )

    @staticmethod
    def _keep(store: PartialStore, gathered: list[dict] | None) -> None:
        """On rank 0, store the batch records other ranks sent (None elsewhere)."""
        if gathered is None:
            return
        stored = store.done()
        for part in gathered:
            for record in part["records"]:
                if record["batch"] not in stored:
                    store.write(record)

    def _setup(self, dataset: EvalDataset | None) -> _Setup:
        config = self.config
        notices = []
        if dataset is None:
            dataset = load_dataset(
                config.data, config.data_root, config.class_names, config.val_labels
            )
        config.check_classes(len(dataset.classes))  # refused before any model work
        n = config.n or len(dataset)
        if n > len(dataset):
            notices.append(f"--n {n}: the dataset has {len(dataset)} images; using all.")
        subset = stratified_subset(dataset.targets, n, config.seed)
        if config.attack_resolution == "native":  # refused before the model loads
            one_size(dataset.image_size(item) for item in subset)
        backbone = load_backbone(config.model, config.pretrained, self.device, config.precision)
        resolution, attack_size = _attack_resolution(config, dataset, subset, backbone.image_size)
        for condition in config.conditions():  # refused before anything is encoded
            check_pixel_shape(condition.attack, attack_size[1], attack_size[0])
        if backbone.info.random_weights:
            notices.append("random weights: the accuracies are meaningless (a speed check).")
        columns = config.columns()
        backbones = {name: self._backbone(column, backbone) for name, column in columns.items()}
        options = {  # the defences' settings are checked before the class texts are encoded
            name: check_defense(column.defense).resolve_settings(
                backbones[name], dict(_settings_of(config, column))
            )
            for name, column in columns.items()
            if column.defense is not None
        }
        purifiers = {
            name: build_purifier(
                columns[name].defense, backbones[name], config.templates, **options[name]
            )
            for name in options
        }
        with tqdm_progress(disable=not (config.progress and self.cluster.is_root)):
            heads = {  # one zero-shot head per backbone
                id(b): ZeroShotClassifier(b, dataset.classifier_labels, config.templates)
                for b in [backbone, *backbones.values()]
            }
        classifier = heads[id(backbone)]
        classifiers = {name: heads[id(b)] for name, b in backbones.items() if b is not backbone}
        stochastic = {name: False for name in config.models} | {
            name: is_stochastic(purifier, heads[id(backbones[name])].class_embeddings)
            for name, purifier in purifiers.items()
        }
        notices += run_notices(config, stochastic, self.device)
        return _Setup(
            dataset,
            subset,
            backbone,
            classifier,
            purifiers,
            options,
            stochastic,
            resolution,
            attack_size,
            notices,
            classifiers,
        )

    def _backbone(self, column: Column, home: Backbone) -> Backbone:
        """A column's backbone: the start-up one, or its own loaded alike (cached)."""
        if column.backbone is None:
            return home
        ref, info = column.backbone, home.info
        check_fits(ref, self.device, info.precision)
        return load_backbone(ref.name, ref.pretrained, self.device, info.precision)

    def _settings(self, setup: _Setup) -> dict:
        """Everything the numbers depend on; a resume must match it exactly."""
        config, info = self.config, setup.backbone.info
        chosen = [(setup.dataset.ids[i], setup.dataset.targets[i]) for i in setup.subset]
        digest = hashlib.sha256(json.dumps(chosen, ensure_ascii=False).encode()).hexdigest()
        return {
            **config.own_settings(),
            "weights_id": info.weights_id,
            "weights": info.weights,
            "precision": info.precision,
            "device_type": self.device.type,
            "data": {
                "source": setup.dataset.source,
                "classes": list(setup.dataset.classes),
                "n_requested": config.n,
                "n": len(setup.subset),
                "subset_sha256": digest,
            },
            **({"release_precision": p} if (p := self._release_precision()) else {}),
            "attack_resolution": setup.resolution,
            "attack_image_size": {"width": setup.attack_size[0], "height": setup.attack_size[1]},
            "evaluation": {
                **config.evaluation_settings(),
                "stochastic": setup.stochastic,
                "eot_samples": self._eot(setup),
                "draws": self._draws(setup),
                "eight_bit": config.protocol != "release",
            },
            "defenses": {
                name: {**_json_safe(setup.options[name]), **purifier.settings()}
                for name, purifier in setup.purifiers.items()
            },
        } | _column_settings(setup)

    def _release_precision(self) -> str | None:
        """How the release's float16 model runs (None: no release threat in this run)."""
        if "release" not in self.config.threats:
            return None
        return check_release_precision(self.config.release_precision, self.device)

    def _eot(self, setup: _Setup) -> dict[str, int]:
        """EOT samples of the run's gradient attack against each model."""
        method = self.config.attack_config(self.config.eps[0]).method
        return {m: self.config.eot_for(method, s) for m, s in setup.stochastic.items()}

    def _draws(self, setup: _Setup) -> dict[str, int]:
        return {m: self.config.draws_for(s) for m, s in setup.stochastic.items()}

    def _evaluator(self, setup: _Setup) -> BatchEvaluator:
        config = self.config
        attacks = {eps: config.attack_config(eps) for eps in config.eps}
        return BatchEvaluator(
            setup.classifier,
            setup.purifiers,
            config.models,
            config.conditions(),
            attacks,
            config.seed,
            eot=self._eot(setup),
            draws=self._draws(setup),
            release_precision=self._release_precision(),
            classifiers=setup.classifiers,
        )

    def _loop(
        self, setup: _Setup, store: PartialStore, batches: list[range], mine: list[int]
    ) -> list[int]:
        """Evaluate this rank's batches, storing each as it finishes; returns their indices."""
        evaluator = self._evaluator(setup)
        dataset, subset = setup.dataset, setup.subset
        bar = self._bar(sum(len(batches[index]) for index in mine), "evaluating")

        def load(index: int) -> torch.Tensor:
            items = [subset[position] for position in batches[index]]
            return torch.stack([self._pixels(setup, item) for item in items])

        done: list[int] = []
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipure-load")
        try:
            upcoming: Future | None = pool.submit(load, mine[0]) if mine else None
            for step, index in enumerate(mine):
                waited = time.perf_counter()
                pixels = upcoming.result()
                waited = time.perf_counter() - waited
                upcoming = pool.submit(load, mine[step + 1]) if step + 1 < len(mine) else None
                items = [subset[position] for position in batches[index]]
                targets = [dataset.targets[item] for item in items]
                labels = torch.tensor(targets, device=self.device)
                result = evaluator(pixels, labels, index)
                result["seconds"]["load"] = waited
                store.write(
                    {
                        "batch": index,
                        "positions": list(batches[index]),
                        "ids": [dataset.ids[item] for item in items],
                        "targets": targets,
                        **result,
                    }
                )
                done.append(index)
                bar.update(len(items))
        finally:
            bar.close()
            pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: do not wait for a load
        return done


def _attack_resolution(
    config: EvalConfig, dataset: EvalDataset, subset: list[int], model_size: int
) -> tuple[str, Size]:
    """The run's attack resolution (the flag's, else chosen from the images' sizes) and the
    (width, height) of the pixels its attacks perturb."""
    sizes = (dataset.image_size(item) for item in subset)
    resolution = config.attack_resolution or default_attack_resolution(sizes, model_size)
    if resolution == "native":
        return resolution, dataset.image_size(subset[0])
    return resolution, (model_size, model_size)


def _json_safe(options: dict) -> dict:
    """Options as JSON values (an object, such as a loaded prior, becomes its type name)."""
    return {
        key: value if isinstance(value, str | int | float | bool | None) else type(value).__name__
        for key, value in options.items()
    }


def _column_settings(setup: _Setup) -> dict:
    """`columns`: the models on another backbone than the start-up one, with that backbone
    (absent when there are none, so earlier runs' settings are unchanged)."""
    if not setup.classifiers:
        return {}
    columns = {}
    for name, classifier in setup.classifiers.items():
        info = classifier.backbone.info
        defense, _, spec = name.partition("@")
        backbone = {"spec": spec, "model": info.name, "pretrained": info.pretrained}
        columns[name] = {"defense": defense, "backbone": backbone | {"weights_id": info.weights_id}}
    return {"columns": columns}
