"""Batch evaluation building blocks: intervals, the McNemar test, subsets, sharding, datasets,
the partial store, protocols."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import numpy as np
import pytest
from open_clip import IMAGENET_CLASSNAMES
from PIL import Image

from clipure_core import InputError
from clipure_core.evaluate import data as data_module
from clipure_core.evaluate.aggregate import paired_comparison
from clipure_core.evaluate.config import EvalConfig
from clipure_core.evaluate.data import DataUnavailableError, load_dataset
from clipure_core.evaluate.protocols import RELEASE_CIFAR_TEMPLATES
from clipure_core.evaluate.release import release_pairs, stage_attack
from clipure_core.evaluate.stats import mcnemar_exact, wilson_interval
from clipure_core.evaluate.store import PartialStore
from clipure_core.evaluate.subset import assign, plan_batches, stratified_subset


def save_image(path, seed: int = 0, size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


# --- Wilson intervals -------------------------------------------------------------------------


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(90, 100)
    assert low == pytest.approx(0.8256, abs=1e-4) and high == pytest.approx(0.9448, abs=1e-4)
    assert wilson_interval(0, 12) == (0.0, pytest.approx(0.2425, abs=1e-4))
    assert wilson_interval(12, 12) == (pytest.approx(0.7575, abs=1e-4), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# --- subsets and sharding ---------------------------------------------------------------------


def test_stratified_subset_balances_classes_and_is_seeded():
    targets = [0] * 10 + [1] * 10 + [2] * 2 + [3] * 30
    chosen = stratified_subset(targets, 20, seed=0)
    counts = Counter(targets[i] for i in chosen)
    # 5 per class; class 2 has only 2 images, so its 3 spare go one each to the others
    assert counts == {0: 6, 1: 6, 2: 2, 3: 6}
    assert len(set(chosen)) == 20
    assert chosen == stratified_subset(targets, 20, seed=0)
    assert chosen != stratified_subset(targets, 20, seed=1)
    assert sorted(stratified_subset(targets, 500, seed=0)) == list(range(len(targets)))
    odd = Counter(targets[i] for i in stratified_subset(targets, 7, seed=3))
    assert sorted(odd.values()) == [1, 2, 2, 2]


def test_batches_are_shared_disjointly_and_completely():
    batches = plan_batches(23, 5)
    assert [len(batch) for batch in batches] == [5, 5, 5, 5, 3]
    assert [i for batch in batches for i in batch] == list(range(23))
    pending = [0, 2, 3, 4, 7, 8, 9]
    for world in (1, 2, 3, 4):
        shares = [assign(pending, rank, world) for rank in range(world)]
        assert sorted(i for share in shares for i in share) == pending
    assert assign(list(range(6)), 1, 2) == [1, 3, 5]  # round-robin on a fresh run
    with pytest.raises(ValueError):
        assign(pending, 2, 2)


# --- datasets ---------------------------------------------------------------------------------


def test_image_folder_reads_classes_and_images(tmp_path):
    root = tmp_path / "data"
    save_image(root / "sports_car" / "b.png")
    save_image(root / "sports_car" / "nested" / "a.JPG")
    save_image(root / "cat" / "1.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    save_image(root / "cat" / ".hidden.png")
    save_image(root / ".cache" / "x.png")
    dataset = load_dataset(str(root))
    assert dataset.classes == ["cat", "sports car"]
    assert dataset.ids == ["cat/1.png", "sports_car/b.png", "sports_car/nested/a.JPG"]
    assert dataset.targets == [0, 1, 1]
    assert dataset.classifier_labels == ["cat", "sports car"]
    assert dataset.image(2).size == (16, 20)


def test_image_folder_class_names_file(tmp_path):
    root = tmp_path / "data"
    save_image(root / "c0" / "0.png")
    save_image(root / "c1" / "0.png")
    lines = tmp_path / "names.txt"
    lines.write_text("tabby cat\ncoffee mug\n")
    assert load_dataset(str(root), class_names=str(lines)).classes == ["tabby cat", "coffee mug"]
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"c1": "mug", "c0": "cat"}))
    assert load_dataset(str(root), class_names=str(mapping)).classes == ["cat", "mug"]
    lines.write_text("only one\n")
    with pytest.raises(InputError, match="1 names for 2 class folders"):
        load_dataset(str(root), class_names=str(lines))
    lines.write_text("same\nsame\n")
    with pytest.raises(InputError, match="more than one class"):
        load_dataset(str(root), class_names=str(lines))


def test_image_folder_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        load_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        load_dataset(str(tmp_path / "empty"))
    save_image(tmp_path / "flat" / "a.png")
    with pytest.raises(InputError, match="no class subfolders"):
        load_dataset(str(tmp_path / "flat"))
    broken = tmp_path / "broken" / "cat" / "x.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image"):
        load_dataset(str(tmp_path / "broken")).image(0)


def test_imagenet_val_synset_folders_use_the_1000_classes(tmp_path):
    root = tmp_path / "val"
    save_image(root / "n01443537" / "ILSVRC2012_val_00000001.JPEG")  # goldfish, index 1
    save_image(root / "n01440764" / "ILSVRC2012_val_00000002.JPEG")  # tench, index 0
    dataset = load_dataset("imagenet-val", root=str(root))
    assert dataset.classes == list(IMAGENET_CLASSNAMES)
    assert dataset.classifier_labels == "imagenet1k"  # keeps the two duplicate names in place
    assert dataset.targets == [0, 1]
    (root / "not_a_synset").mkdir()
    with pytest.raises(InputError, match="not ImageNet-1k synsets"):
        load_dataset("imagenet-val", root=str(root))
    with pytest.raises(InputError, match="--data-root"):
        load_dataset("imagenet-val")


def test_imagenet_val_flat_folder_with_labels_file(tmp_path):
    root = tmp_path / "val"
    save_image(root / "ILSVRC2012_val_00000001.JPEG")
    save_image(root / "ILSVRC2012_val_00000002.JPEG")
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n01443537 1 2 3 4 n01443537 5 6 7 8\n"
        "ILSVRC2012_val_00000001,n15075141 1 2 3 4\n"
    )
    dataset = load_dataset("imagenet-val", root=str(root), val_labels=str(labels))
    assert dataset.ids == ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]
    assert dataset.targets == [999, 1]
    with pytest.raises(InputError, match="--val-labels"):
        load_dataset("imagenet-val", root=str(root))


def test_cifar10_offline_without_a_copy_names_data_root(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "hub_reachable", lambda url: False)
    with pytest.raises(DataUnavailableError, match="--data-root") as caught:
        load_dataset("cifar10", root=str(tmp_path))
    assert "unreachable" in str(caught.value) and str(tmp_path) in str(caught.value)


def test_cifar10_from_a_local_root(tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batch = {"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3, 4, 9]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    monkeypatch.setattr(cifar, "check_integrity", lambda *args: True)  # md5s of the real files
    dataset = load_dataset("cifar10", root=str(tmp_path), download=False)
    assert dataset.classes == names and dataset.targets == [0, 1, 2, 3, 4, 9]
    assert dataset.ids[5] == "cifar10-test/5"
    expected = batch["data"][5].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(dataset.image(5)), expected)


# --- the partial store ------------------------------------------------------------------------


def test_store_refuses_other_settings_and_ignores_broken_batches(tmp_path):
    settings = {"seed": 0, "attack": {"eps": [4.0], "method": "pgd"}}
    store = PartialStore(tmp_path, settings)
    assert store.check_settings() is None  # first use records them
    store.write({"batch": 0, "value": 1})
    store.write({"batch": 1, "value": 2})
    assert store.done() == {0, 1}
    assert store.read(1)["value"] == 2
    assert not [path for path in store.folder.iterdir() if path.name.endswith(".tmp")]
    store.path(1).write_text('{"batch": 1, "val')  # a torn file from elsewhere
    assert store.done() == {0}
    assert PartialStore(tmp_path, dict(settings)).check_settings() is None
    other = PartialStore(tmp_path, {"seed": 0, "attack": {"eps": [8.0], "method": "pgd"}})
    message = other.check_settings()
    assert "attack.eps: [4.0] -> [8.0]" in message and "--out" in message
    assert other.done() == set()  # batches of other settings never count


# --- the exact McNemar test -------------------------------------------------------------------


def test_mcnemar_exact_known_values():
    # two-sided exact binomial test of the discordant pairs with p = 1/2, by hand:
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 * C(5, 0) / 2^5
    assert mcnemar_exact(9, 1) == pytest.approx(0.021484375)  # 2 * (1 + 10) / 2^10
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375)  # symmetric in its inputs
    assert mcnemar_exact(2, 8) == pytest.approx(0.109375)  # 2 * (1 + 10 + 45) / 2^10
    assert mcnemar_exact(1, 3) == pytest.approx(0.625)  # 2 * (1 + 4) / 2^4
    assert mcnemar_exact(3, 3) == 1.0  # the doubled tail passes 1
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence
    assert mcnemar_exact(0, 2000) < 1e-300  # large counts in exact integer arithmetic
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_paired_comparison_counts_and_tests_constructed_outcomes():
    """5 images: undefended CLIP right on 4 clean and robust on none; the defence right on all
    5 and robust on all 5. Counts and exact p-values written out by hand."""
    positions = list(range(5))
    clean = {"undefended": [0, 0, 0, 0, 1], "clipure_cos": [0, 0, 0, 0, 0]}
    records = [{"positions": positions, "targets": [0] * 5, "clean": clean}]
    rows = [
        {"eps": 4.0, "threat": "bpda", "attack": "pgd", "attack_seed": 0, "model": model}
        | {"position": position, "robust": model == "clipure_cos"}
        for model in ("undefended", "clipure_cos")
        for position in positions
    ]
    entries = {entry["threat"]: entry for entry in paired_comparison(records, rows)}
    assert set(entries) == {"clean", "bpda", "worst case"}
    counts = ("n", "both", "defense_only", "undefended_only", "neither")
    assert [entries["clean"][k] for k in counts] == [5, 4, 1, 0, 0]
    assert entries["clean"]["p_value"] == pytest.approx(1.0)  # b=1, c=0: 2 * 1/2
    for threat in ("bpda", "worst case"):
        assert [entries[threat][k] for k in counts] == [5, 0, 5, 0, 0]
        assert entries[threat]["p_value"] == pytest.approx(0.0625)  # b=5, c=0: 2 / 2^5


# --- protocols --------------------------------------------------------------------------------


def test_release_pairs_follow_autoattack_batching():
    assert release_pairs(range(5), 2) == [[0, 1], [2, 3], [4]]
    assert release_pairs([0, 2, 3, 5, 6], 2) == [[0, 2], [3, 5], [6]]
    assert release_pairs([], 2) == []


def test_protocols_fix_their_settings_and_refuse_contradictions(tmp_path):
    custom = EvalConfig(data="x", out=tmp_path)
    assert (custom.protocol, custom.attack, custom.threats) == ("custom", "autoattack", ("paper",))
    assert (custom.batch_size, custom.eot, custom.eval_draws, custom.attack_seeds) == (64, 1, 1, 1)
    assert custom.templates == "ensemble"

    release = EvalConfig(data="cifar10", out=tmp_path, protocol="release", eps=(1, 4))
    assert release.threats == ("release",) and release.batch_size == 2
    assert release.templates == RELEASE_CIFAR_TEMPLATES and len(release.templates) == 18
    assert EvalConfig(data="imagenet-val", out=tmp_path, protocol="release").templates == (
        "ensemble"
    )
    assert [stage_attack(release, 4, stage).restarts for stage in ("apgd-ce", "apgd-t")] == [5, 1]

    adaptive = EvalConfig(
        data="x", out=tmp_path, protocol="adaptive", models=("none", "clipure_diff")
    )
    assert adaptive.precision == "fp32" and adaptive.threats == ("transfer", "bpda", "full")
    conditions = [(c.threat, c.attack_name) for c in adaptive.conditions()]
    assert conditions == [
        ("transfer", "autoattack"),
        ("bpda", "autoattack"),
        ("full", "autoattack"),
        ("full", "square"),
        ("full", "noise"),
    ]
    assert adaptive.eot_for("autoattack", stochastic=True) == 20
    assert adaptive.eot_for("autoattack", stochastic=False) == 1
    assert adaptive.eot_for("square", stochastic=True) == 1  # no gradients to average
    assert (adaptive.draws_for(True), adaptive.draws_for(False)) == (10, 1)

    refused = [
        {"protocol": "release", "batch_size": 64},
        {"protocol": "release", "threats": ("bpda",)},
        {"protocol": "release", "templates": "single"},
        {"protocol": "adaptive", "precision": "fp16"},
        {"protocol": "adaptive", "eot": 5},
        {"protocol": "adaptive", "defense_settings": {"clipure_cos": {"batch_coupled": True}}},
        {"protocol": "sideways"},
        {"attack_seeds": 0},
        {"eval_draws": 100},
    ]
    for settings in refused:
        with pytest.raises(InputError):
            EvalConfig(data="x", out=tmp_path, **settings)
