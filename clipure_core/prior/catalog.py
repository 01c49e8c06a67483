"""Which prior serves which backbone: trained ones in a priors folder, then known ones."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

from ..backbone import Backbone
from .loading import LAION_VIT_L14, load_prior
from .model import LatentPrior

PRIORS_DIR_ENV = "CLIPURE_PRIORS_DIR"
DEFAULT_PRIORS_DIR = "priors"
KNOWN_PRIORS: dict[tuple[str, str], str] = {
    ("ViT-L-14", "openai"): LAION_VIT_L14,
    ("ViT-L-14-quickgelu", "openai"): LAION_VIT_L14,
}
_LOADED: dict[tuple, LatentPrior] = {}
_LOCK = threading.Lock()


def priors_dir() -> Path:
    """$CLIPURE_PRIORS_DIR, else ./priors."""
    return Path(os.environ.get(PRIORS_DIR_ENV, DEFAULT_PRIORS_DIR))


def prior_for(backbone: Backbone) -> str | None:
    """The checkpoint of a prior trained on this backbone's embeddings, or None.

    A trained prior is a checkpoint with a JSON beside it whose "backbone" names the same
    architecture and weights id (written by `python -m clipure_core.train_prior`).
    """
    info = backbone.info
    folder = priors_dir()
    if folder.is_dir():
        for config_path in sorted(folder.glob("*.json")):
            try:
                trained_on = json.loads(config_path.read_text()).get("backbone", {})
            except (OSError, json.JSONDecodeError):
                continue
            if (trained_on.get("model"), trained_on.get("weights_id")) == (
                info.name,
                info.weights_id,
            ):
                for suffix in (".safetensors", ".pt", ".pth"):
                    if config_path.with_suffix(suffix).is_file():
                        return str(config_path.with_suffix(suffix))
    return KNOWN_PRIORS.get((info.name, info.pretrained))


def cached_prior(checkpoint: str, device: torch.device, dtype: torch.dtype) -> LatentPrior:
    """`load_prior`, once per process for each checkpoint (file version), device and dtype."""
    path = Path(checkpoint)
    version = (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
    key = (checkpoint, version, str(device), dtype)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_prior(checkpoint, device=device, dtype=dtype)
        return _LOADED[key]
