"""Labelled image datasets for batch evaluation: an ImageFolder, CIFAR-10 test, ImageNet val.

Every dataset is a list of (id, label index) items plus the class names in label order; an
image is decoded only when a batch needs it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from ..errors import InputError
from ..loading import hub_reachable
from ..prompts import LABEL_PRESETS
from ..text_embeddings import cache_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR10 = "cifar10"
IMAGENET_VAL = "imagenet-val"
KEYWORDS = (CIFAR10, IMAGENET_VAL)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_WNID = re.compile(r"^n\d{8}$")
_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class DataUnavailableError(RuntimeError):
    """A dataset could not be found locally nor downloaded; the message says how to fix it."""


class EvalDataset:
    """Labelled images: `ids[i]` names item i, `targets[i]` is its index into `classes`.

    `preset` names the engine's label preset when the classes are one ('imagenet1k': its
    1000 names include two duplicates, which only the preset keeps in place).
    """

    def __init__(
        self,
        source: str,
        classes: Sequence[str],
        ids: Sequence[str],
        targets: Sequence[int],
        preset: str | None = None,
    ) -> None:
        if len(ids) != len(targets):
            raise ValueError("ids and targets must have the same length.")
        self.source = source
        self.preset = preset
        if preset is not None:
            if tuple(classes) != LABEL_PRESETS[preset]:
                raise ValueError(f"classes differ from the {preset!r} preset.")
            self.classes = list(classes)
        else:
            self.classes = _check_class_names(classes)
        self.ids = list(ids)
        self.targets = [int(target) for target in targets]
        if any(not 0 <= target < len(self.classes) for target in self.targets):
            raise ValueError("every target must index a class name.")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classifier_labels(self) -> str | list[str]:
        """What `ZeroShotClassifier` takes to get exactly `classes`, in order."""
        return self.preset if self.preset is not None else list(self.classes)

    def image(self, index: int) -> Image.Image:
        """Item `index` as a PIL image."""
        raise NotImplementedError

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of item `index` upright, without decoding its pixels."""
        raise NotImplementedError


class FileDataset(EvalDataset):
    """Images stored as files; ids are paths relative to `root`."""

    def __init__(
        self,
        source: str,
        root: Path,
        classes: Sequence[str],
        ids: Sequence[str],
        targets: Sequence[int],
        preset: str | None = None,
    ) -> None:
        super().__init__(source, classes, ids, targets, preset)
        self.root = root

    def image(self, index: int) -> Image.Image:
        path = self.root / self.ids[index]
        try:
            image = Image.open(path)
            image.load()
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise InputError(f"cannot read image {path}: {error}") from error
        return image

    def image_size(self, index: int) -> tuple[int, int]:
        path = self.root / self.ids[index]
        try:
            with Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(ExifTags.Base.Orientation)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise InputError(f"cannot read image {path}: {error}") from error
        return (height, width) if orientation in _QUARTER_TURNS else (width, height)


class ArrayDataset(EvalDataset):
    """Images held in memory as an (N, H, W, 3) uint8 array (CIFAR-10, synthetic data)."""

    def __init__(
        self, source: str, images: np.ndarray, classes: Sequence[str], targets: Sequence[int]
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError("images must be an (N, H, W, 3) uint8 array.")
        super().__init__(source, classes, [f"{source}/{i}" for i in range(len(images))], targets)
        self.images = images

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index], mode="RGB")

    def image_size(self, index: int) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[1]


def load_dataset(
    data: str,
    root: str | None = None,
    class_names: str | None = None,
    val_labels: str | None = None,
    download: bool = True,
) -> EvalDataset:
    """The dataset `data` names: an ImageFolder path, 'cifar10' or 'imagenet-val'.

    `root`: where CIFAR-10 is (or is downloaded to) and the ImageNet validation folder.
    `class_names`: an ImageFolder's class names (JSON {folder: name}, or one name per line in
    sorted folder order). `val_labels`: for a flat ImageNet folder, lines 'IMAGE WNID ...'.
    """
    if data == CIFAR10:
        return load_cifar10(Path(root) if root else cache_root() / "datasets", download)
    if data == IMAGENET_VAL:
        if not root:
            raise InputError("--data imagenet-val needs --data-root: the validation folder.")
        return load_imagenet_val(Path(root), Path(val_labels) if val_labels else None)
    path = Path(data).expanduser()
    if not path.is_dir():
        raise InputError(
            f"--data {data!r}: not a folder; give an ImageFolder directory (one subfolder "
            f"per class), or one of {', '.join(KEYWORDS)}."
        )
    return load_image_folder(path, Path(class_names) if class_names else None)


def load_image_folder(root: Path, class_names: Path | None = None) -> FileDataset:
    """One subfolder per class (sorted = label order); images anywhere below it.

    Class names are the folder names with '_' read as a space, unless `class_names` says
    otherwise.
    """
    folders = _class_folders(root)
    if not folders:
        raise InputError(f"{root}: no class subfolders; expected ROOT/CLASS/IMAGE files.")
    if class_names:
        names = _read_class_names(class_names, folders)
    else:
        names = [folder.replace("_", " ") for folder in folders]
    ids, targets = _scan(root, folders)
    if not ids:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders.")
    return FileDataset(f"imagefolder:{root.resolve()}", root, names, ids, targets)


def load_cifar10(root: Path, download: bool = True) -> ArrayDataset:
    """torchvision's CIFAR-10 test set (10,000 images), from `root` or downloaded there."""
    from torchvision.datasets import CIFAR10 as TorchCIFAR10

    try:
        dataset = TorchCIFAR10(str(root), train=False, download=False)
    except RuntimeError:
        tried = f"{root} has no complete copy (torchvision's cifar-10-batches-py)"
        if not download:
            raise _cifar_unavailable(tried, "download: not allowed") from None
        if not hub_reachable(CIFAR10_URL):
            raise _cifar_unavailable(tried, f"download: {CIFAR10_URL} is unreachable") from None
        try:
            dataset = TorchCIFAR10(str(root), train=False, download=True)
        except (OSError, RuntimeError) as error:
            raise _cifar_unavailable(tried, f"download failed: {error}") from error
    return ArrayDataset(
        "cifar10-test", np.asarray(dataset.data, dtype=np.uint8), dataset.classes, dataset.targets
    )


def _cifar_unavailable(tried: str, download: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"CIFAR-10 is not available: tried {tried}; {download}.\nhint: run once with "
        "internet access, or pass --data-root DIR where DIR holds "
        "torchvision's extracted cifar-10-batches-py folder (from cifar-10-python.tar.gz)."
    )


def load_imagenet_val(root: Path, val_labels: Path | None = None) -> FileDataset:
    """ImageNet-1k validation images labelled with the 1000 classes in sorted-synset order
    (open_clip's IMAGENET_CLASSNAMES). Either one folder per synset (any subset of the 1000),
    or a flat folder plus `val_labels` ('IMAGE WNID ...' lines, e.g. LOC_val_solution.csv)."""
    from open_clip import IMAGENET_CLASSNAMES
    from timm.data import ImageNetInfo

    if not root.is_dir():
        raise InputError(f"--data-root {root}: not a folder.")
    synsets = list(ImageNetInfo().label_names())
    index = {wnid: i for i, wnid in enumerate(synsets)}
    source = f"imagenet-val:{root.resolve()}"
    folders = _class_folders(root)
    if folders:
        unknown = [name for name in folders if name not in index]
        if unknown:
            raise InputError(
                f"{root}: {len(unknown)} subfolder(s) are not ImageNet-1k synsets "
                f"(e.g. {unknown[0]!r}); expected folders named like n01440764."
            )
        ids, folder_targets = _scan(root, folders)
        targets = [index[folders[target]] for target in folder_targets]
    else:
        if val_labels is None:
            raise InputError(
                f"{root} has no synset subfolders; for a flat folder of validation images "
                "give --val-labels FILE with 'IMAGE WNID' lines."
            )
        ids, targets = _flat_imagenet(root, _read_val_labels(val_labels), index)
    if not ids:
        raise InputError(f"{root}: no images found.")
    return FileDataset(source, root, IMAGENET_CLASSNAMES, ids, targets, preset="imagenet1k")


def _flat_imagenet(
    root: Path, labels: dict[str, str], index: dict[str, int]
) -> tuple[list[str], list[int]]:
    files = sorted(name for name in os.listdir(root) if name.lower().endswith(IMAGE_EXTENSIONS))
    missing = [name for name in files if Path(name).stem not in labels]
    if missing:
        raise InputError(
            f"--val-labels has no label for {len(missing)} image(s), e.g. {missing[0]}."
        )
    bad = sorted({labels[Path(name).stem] for name in files} - set(index))
    if bad:
        raise InputError(f"--val-labels: {bad[0]!r} is not an ImageNet-1k synset.")
    return files, [index[labels[Path(name).stem]] for name in files]


def _read_val_labels(path: Path) -> dict[str, str]:
    """IMAGE -> WNID from lines 'IMAGE[,| ]... WNID ...' (header lines without a WNID skipped)."""
    labels = {}
    for line in _read_text(path).splitlines():
        fields = re.split(r"[\s,]+", line.strip())
        wnid = next((field for field in fields[1:] if _WNID.match(field)), None)
        if fields and wnid:
            labels[Path(fields[0]).stem] = wnid
    if not labels:
        raise InputError(f"--val-labels {path}: no 'IMAGE WNID' lines found.")
    return labels


def _class_folders(root: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _scan(root: Path, folders: Sequence[str]) -> tuple[list[str], list[int]]:
    """Relative paths of the images under each class folder (sorted), and their labels."""
    ids, targets = [], []
    for target, folder in enumerate(folders):
        for directory, subdirs, files in os.walk(root / folder, followlinks=True):
            subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    ids.append((Path(directory) / name).relative_to(root).as_posix())
                    targets.append(target)
    return ids, targets


def _read_class_names(path: Path, folders: Sequence[str]) -> list[str]:
    """Names per folder from JSON {folder: name} or one name per line (sorted folder order)."""
    text = _read_text(path)
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"--class-names {path}: invalid JSON ({error}).") from error
        if not isinstance(mapping, dict):
            raise InputError(f"--class-names {path}: expected a JSON object {{folder: name}}.")
        missing = [folder for folder in folders if folder not in mapping]
        if missing:
            raise InputError(f"--class-names {path}: no name for folder {missing[0]!r}.")
        return [str(mapping[folder]) for folder in folders]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != len(folders):
        raise InputError(
            f"--class-names {path}: {len(names)} names for {len(folders)} class folders; "
            "give one name per line in sorted folder order, or a JSON {folder: name}."
        )
    return names


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error}") from error


def _check_class_names(classes: Sequence[str]) -> list[str]:
    """Class names as the classifier will see them; they must stay distinct and non-empty."""
    cleaned = [" ".join(str(name).split()) for name in classes]
    if any(not name for name in cleaned):
        raise InputError("class names must not be empty.")
    if len(set(cleaned)) != len(cleaned):
        duplicate = next(name for name in cleaned if cleaned.count(name) > 1)
        raise InputError(f"class name {duplicate!r} is given to more than one class.")
    return cleaned
