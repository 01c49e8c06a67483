"""Averaged prompt embeddings, cached in memory and on disk.

ImageNet-1k x 80 templates is 80,000 text-encoder passes: paid once per model, ever. The disk
cache is keyed by the weights' identity, the precision, the prompts and the library versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .backbone import Backbone

_LOGGER = logging.getLogger(__name__)
_MEMORY: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
MEMORY_ENTRIES = 256  # label sets kept in memory (least recently used dropped first)
_LOCK = threading.Lock()


def cache_root() -> Path:
    """CLIPURE_CACHE_DIR, else $XDG_CACHE_HOME/clipure, else ~/.cache/clipure."""
    if os.environ.get("CLIPURE_CACHE_DIR"):
        return Path(os.environ["CLIPURE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipure"


def prompt_group_embeddings(backbone: Backbone, groups: Sequence[Sequence[str]]) -> torch.Tensor:
    """(G, D): for each group of prompts, the mean of their unit-norm text embeddings."""
    key = _cache_key(backbone, groups)
    memory_key = (key, str(backbone.device))
    with _LOCK:
        if memory_key in _MEMORY:
            _MEMORY.move_to_end(memory_key)
            return _MEMORY[memory_key]
        path = cache_root() / "text" / f"{key}.safetensors"
        embeddings = _read(path, backbone.device)
        if embeddings is None:
            embeddings = torch.stack(
                [backbone.normalized_text(list(group)).mean(dim=0) for group in groups]
            )
            _write(path, embeddings)
        _MEMORY[memory_key] = embeddings
        if len(_MEMORY) > MEMORY_ENTRIES:
            _MEMORY.popitem(last=False)
        return embeddings


def class_embeddings(
    backbone: Backbone, labels: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """(N, D) unit-norm class embeddings: the template ensemble of each label (CLIP paper)."""
    groups = [[template.format(label) for template in templates] for label in labels]
    return F.normalize(prompt_group_embeddings(backbone, groups), dim=-1)


def _cache_key(backbone: Backbone, groups: Sequence[Sequence[str]]) -> str:
    info = backbone.info
    payload = json.dumps(
        {
            "model": info.name,
            "weights": info.weights_id,
            "precision": info.precision,
            "open_clip": open_clip.__version__,
            "torch": torch.__version__.split("+")[0],
            "groups": [list(group) for group in groups],
        },
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _read(path: Path, device: torch.device) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        return load_file(path, device=str(device))["embeddings"]
    except Exception as error:  # a broken cache file is recomputed
        _LOGGER.warning("ignoring unreadable text-embedding cache %s: %s", path, error)
        return None


def _write(path: Path, embeddings: torch.Tensor) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        save_file({"embeddings": embeddings.detach().cpu().contiguous()}, temporary)
        os.replace(temporary, path)
    except OSError as error:
        _LOGGER.warning("text-embedding cache not written to %s: %s", path, error)
