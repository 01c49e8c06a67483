"""Averaged prompt embeddings, cached per prompt group in memory and on disk.

A group is one label's template ensemble ("a photo of a cat.", "a drawing of a cat.", ...) or
the null prompt's ("a photo of a .", ...). Each group is cached on its own, keyed by the
model, the weights' identity, the precision, the group's prompts (the templates with the label
filled in) and the library versions: adding one label to a cached set encodes one label, and
ImageNet-1k x 80 templates is encoded once per model, ever.

Encoding reports progress as (prompts done, prompts to encode) to an `on_progress` callback,
or to the one installed with `text_progress(...)` for the calls made inside it (the app's
progress bar, the command line's tqdm). An exception raised by the callback (Stop, a refusal)
ends the encoding at its next batch; the groups finished until then stay cached. No lock is
held while the model works: a request whose labels are cached never waits for one that encodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .backbone import Backbone

_LOGGER = logging.getLogger(__name__)
MEMORY_ENTRIES = 8192  # prompt groups kept in memory (least recently used dropped first)
CHUNK_PROMPTS = 512  # groups are encoded (sorted by length) and cached this many prompts at a time
CACHE_FORMAT = 2  # 1 cached whole label sets; 2 caches each group on its own

Progress = Callable[[int, int], None]  # (prompts done, prompts to encode); may raise to stop
_PROGRESS: ContextVar[Progress | None] = ContextVar("clipure_text_progress", default=None)
_MEMORY: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
_RATES: dict[tuple[str, ...], float] = {}  # prompts/s last measured, per backbone
_LOCK = threading.Lock()  # guards _MEMORY and _RATES only, never held while encoding


def cache_root() -> Path:
    """CLIPURE_CACHE_DIR, else $XDG_CACHE_HOME/clipure, else ~/.cache/clipure."""
    if os.environ.get("CLIPURE_CACHE_DIR"):
        return Path(os.environ["CLIPURE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipure"


@contextmanager
def text_progress(callback: Progress | None) -> Iterator[None]:
    """Report the progress of every text encoding started inside this block (in this thread
    or task) to `callback(done, total)`; an exception it raises stops the encoding."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@contextmanager
def tqdm_progress(desc: str = "text embeddings", disable: bool = False) -> Iterator[None]:
    """`text_progress` with a tqdm bar (on stderr) per encoding: prompts done / total."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or done == 0:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, unit="prompt", disable=disable, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        with text_progress(update):
            yield
    finally:
        if bar is not None:
            bar.close()


def class_prompt_groups(labels: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """One group per label: every template with the label filled in."""
    return [[template.format(label) for template in templates] for label in labels]


def prompt_group_embeddings(
    backbone: Backbone, groups: Sequence[Sequence[str]], on_progress: Progress | None = None
) -> torch.Tensor:
    """(G, D): for each group of prompts, the mean of their unit-norm text embeddings.

    Groups found in memory or on disk are not encoded; the others are, `CHUNK_PROMPTS`
    prompts at a time, each chunk cached as soon as it is done. `on_progress` (default: the
    one `text_progress` installed) sees (prompts done, prompts to encode) before every batch
    and at the end; after a chunk, `measured_rate` already includes it.
    """
    on_progress = on_progress or _PROGRESS.get()
    keys = [group_key(backbone, group) for group in groups]
    found = _lookup(backbone, dict(zip(keys, groups, strict=True)))
    missing = {key: list(group) for key, group in zip(keys, groups, strict=True)}
    missing = {key: group for key, group in missing.items() if key not in found}
    if missing:
        found.update(_encode(backbone, missing, on_progress))
    return torch.stack([found[key] for key in keys])


def class_embeddings(
    backbone: Backbone,
    labels: Sequence[str],
    templates: Sequence[str],
    on_progress: Progress | None = None,
) -> torch.Tensor:
    """(N, D) unit-norm class embeddings: the template ensemble of each label (CLIP paper)."""
    groups = class_prompt_groups(labels, templates)
    return F.normalize(prompt_group_embeddings(backbone, groups, on_progress), dim=-1)


def missing_prompts(backbone: Backbone, groups: Sequence[Sequence[str]]) -> int:
    """How many prompts `prompt_group_embeddings(backbone, groups)` would encode now."""
    unique = {group_key(backbone, group): group for group in groups}
    device = str(backbone.device)
    with _LOCK:
        unique = {key: group for key, group in unique.items() if (key, device) not in _MEMORY}
    return sum(len(group) for key, group in unique.items() if not _path(key).is_file())


def measured_rate(backbone: Backbone) -> float | None:
    """Prompts per second of this backbone's latest encoding in this process (None before
    any): what the app's time estimates use."""
    with _LOCK:
        return _RATES.get(_rate_key(backbone))


def group_key(backbone: Backbone, group: Sequence[str]) -> str:
    """The cache key of one group: model, weights, precision, prompts, library versions."""
    info = backbone.info
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "model": info.name,
            "weights": info.weights_id,
            "precision": info.precision,
            "open_clip": open_clip.__version__,
            "torch": torch.__version__.split("+")[0],
            "prompts": list(group),
        },
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _lookup(backbone: Backbone, wanted: dict[str, Sequence[str]]) -> dict[str, torch.Tensor]:
    """The wanted groups found in memory, then on disk (those are put in memory)."""
    device = str(backbone.device)
    found = {}
    with _LOCK:
        for key in wanted:
            if (key, device) in _MEMORY:
                _MEMORY.move_to_end((key, device))
                found[key] = _MEMORY[(key, device)]
    for key in wanted:
        if key not in found:
            embedding = _read(_path(key), backbone.device)
            if embedding is not None:
                found[key] = _remember(key, device, embedding)
    return found


def _encode(
    backbone: Backbone, groups: dict[str, list[str]], on_progress: Progress | None
) -> dict[str, torch.Tensor]:
    """Encode `groups` chunk by chunk, caching each chunk's groups when it is done."""
    total = sum(len(group) for group in groups.values())
    device = str(backbone.device)
    done, started, found = 0, time.perf_counter(), {}
    for chunk in _chunks(list(groups.items())):
        texts = [prompt for _, group in chunk for prompt in group]

        def on_batch(finished: int, before: int = done, size: int = len(texts)) -> None:
            if on_progress is not None and finished < size:  # the chunk's end: reported below
                on_progress(before + finished, total)

        embeddings = backbone.normalized_text(texts, on_batch=on_batch)
        start = 0
        for key, group in chunk:
            embedding = embeddings[start : start + len(group)].mean(dim=0)
            start += len(group)
            _write(_path(key), embedding)
            found[key] = _remember(key, device, embedding)
        done += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed > 0:
            with _LOCK:
                _RATES[_rate_key(backbone)] = done / elapsed
        if on_progress is not None:
            on_progress(done, total)
    return found


def _chunks(items: list[tuple[str, list[str]]]) -> Iterator[list[tuple[str, list[str]]]]:
    """Consecutive groups of about CHUNK_PROMPTS prompts (at least one group each)."""
    chunk, size = [], 0
    for item in items:
        if chunk and size + len(item[1]) > CHUNK_PROMPTS:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item[1])
    if chunk:
        yield chunk


def _remember(key: str, device: str, embedding: torch.Tensor) -> torch.Tensor:
    with _LOCK:
        _MEMORY[(key, device)] = embedding
        _MEMORY.move_to_end((key, device))
        while len(_MEMORY) > MEMORY_ENTRIES:
            _MEMORY.popitem(last=False)
    return embedding


def _rate_key(backbone: Backbone) -> tuple[str, ...]:
    info = backbone.info
    return (info.name, info.weights_id, str(backbone.device), info.precision)


def _path(key: str) -> Path:
    return cache_root() / "text" / f"{key}.safetensors"


def _read(path: Path, device: torch.device) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        return load_file(path, device=str(device))["embedding"]
    except Exception as error:  # a broken cache file is recomputed
        _LOGGER.warning("ignoring unreadable text-embedding cache %s: %s", path, error)
        return None


def _write(path: Path, embedding: torch.Tensor) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        save_file({"embedding": embedding.detach().cpu().contiguous()}, temporary)
        os.replace(temporary, path)
    except OSError as error:
        _LOGGER.warning("text-embedding cache not written to %s: %s", path, error)
