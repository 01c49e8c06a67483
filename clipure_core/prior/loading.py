"""`load_prior`: read prior checkpoints (ours or dalle2-pytorch's) without unpickling code."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import InputError, WeightsUnavailableError
from ..loading import hub_file, resolve_device
from .config import PriorConfig
from .model import LatentPrior

_LOGGER = logging.getLogger(__name__)
CONFIG_METADATA_KEY = "clipure_prior_config"
# The checkpoint the paper's authors used: LAION's DALLE2-pytorch prior for OpenAI ViT-L/14.
LAION_VIT_L14 = "hf-hub:zenglishuci/conditioned-prior/vit-l-14/prior_aes_finetune.pth"
KNOWN_CONFIGS: dict[str, dict] = {
    LAION_VIT_L14: {
        "dim": 768,
        "depth": 24,
        "dim_head": 64,
        "heads": 32,
        "normformer": True,
        "attn_dropout": 5e-2,
        "ff_dropout": 5e-2,
        "num_time_embeds": 1,
        "num_image_embeds": 1,
        "num_text_embeds": 1,
        "num_timesteps": 1000,
        "ff_mult": 4,
        "image_embed_dim": 768,
        "timesteps": 1000,
        "cond_drop_prob": 0.1,
        "loss_type": "l2",
        "condition_on_text_encodings": True,
    },
}
# Buffers the reference stores but that follow from the config: recomputed when absent.
_DERIVED = ("noise_scheduler.", "rotary_emb.freqs")


def load_prior(
    checkpoint: str | Path,
    config: dict | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | None = None,
) -> LatentPrior:
    """Load a prior from a local file or 'hf-hub:org/repo/path/in/repo.pth'.

    The config (reference keyword names) comes from `config`, else from the file's safetensors
    metadata or a JSON file beside it (same stem), else from the known checkpoints. Plain state
    dicts and ones under 'ema_model' (preferred) or 'model' load; a 'clip.' sub-tree is ignored.
    """
    spec = str(checkpoint)
    path = _local_path(spec, cache_dir)
    values = flatten_config(config) if config else _stored_config(path)
    values = values or KNOWN_CONFIGS.get(spec)
    if values is None:
        raise InputError(
            f"no config for prior {spec}: pass config=... (reference keyword names) or put a "
            f"{path.with_suffix('.json').name} beside it."
        )
    prior = LatentPrior(PriorConfig.from_dict(values))
    _load_weights(prior, _read_state(path), spec)
    return prior.to(device=resolve_device(device), dtype=dtype).eval().requires_grad_(False)


def _local_path(spec: str, cache_dir: str | None) -> Path:
    if spec.startswith("hf-hub:"):
        parts = spec.removeprefix("hf-hub:").split("/")
        if len(parts) < 3:
            raise InputError(f"{spec}: use hf-hub:org/repo/path/to/file.")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        return Path(hub_file(repo_id, (filename,), cache_dir, f"prior {spec}"))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"prior checkpoint not found: {path.resolve()}")
    return path


def _stored_config(path: Path) -> dict | None:
    beside = path.with_suffix(".json")
    if beside.is_file():
        try:
            stored = json.loads(beside.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"prior config {beside} is not valid JSON: {error}") from error
        return flatten_config(stored.get("prior", stored))
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        if CONFIG_METADATA_KEY in metadata:
            return json.loads(metadata[CONFIG_METADATA_KEY])
    return None


def flatten_config(values: dict) -> dict:
    """Accept dalle2-pytorch's training-config layout too: {"net": {...}, ...prior keys}."""
    if isinstance(values.get("net"), dict):
        return {**values["net"], **{k: v for k, v in values.items() if k != "net"}}
    return values


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise WeightsUnavailableError(
            f"refused to load {path}: not a plain tensor checkpoint (pickled code is never run)."
        ) from error
    except (OSError, RuntimeError, SafetensorError) as error:
        raise WeightsUnavailableError(f"could not read prior checkpoint {path}: {error}") from error
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"prior checkpoint {path} holds no state dict.")
    for key in ("ema_model", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return {
        key.removeprefix("module."): value
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and not key.removeprefix("module.").startswith("clip.")
    }


def _load_weights(prior: LatentPrior, state: dict[str, torch.Tensor], spec: str) -> None:
    """Strict on learned parameters; derived buffers must match when present."""
    expected = prior.state_dict()
    missing = [key for key in expected if key not in state and not _derived(key)]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"prior {spec} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} ({len(missing)} missing, {len(unexpected)} unexpected)."
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise WeightsUnavailableError(
                f"prior {spec}: {key} has shape {tuple(value.shape)}, the config gives "
                f"{tuple(expected[key].shape)}."
            )
        if _derived(key) and not torch.allclose(value.float(), expected[key].float(), atol=1e-5):
            _LOGGER.warning(
                "prior %s: using the stored %s, which differs from the config's", spec, key
            )
    prior.load_state_dict({**expected, **state}, strict=True)


def _derived(key: str) -> bool:
    return key.startswith(_DERIVED[0]) or key.endswith(_DERIVED[1])
