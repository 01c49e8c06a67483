"""`load_backbone`: open_clip models from hub tags, `hf-hub:` ids, local files or random weights.

Weights are looked up in the local caches first and downloaded only when the hub answers, so a
machine without internet gets one clear error within seconds instead of minutes of retries.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import pickle
import socket
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError

from .backbone import Backbone, BackboneInfo
from .errors import InputError, WeightsUnavailableError
from .seeding import seeded

RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0
PRECISIONS = ("fp32", "fp16", "bf16")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")

_CACHE: dict[tuple, Backbone] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class _Weights:
    """What `open_clip.create_model` needs to build one model, and how we found it."""

    model_name: str
    checkpoint: str | None = None
    quick_gelu: bool = False
    preprocess: dict = field(default_factory=dict)
    weights_id: str = RANDOM_WEIGHTS
    description: str = ""  # for people: the tag, or the file / folder with its sha256


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present, else CPU; a requested CUDA device that is absent is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is visible; use 'cpu'.")
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: use 'cpu' or 'cuda'.")
    return resolved


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """fp32 by default; fp16 and bf16 on a GPU and on CPU (see `precision_notice`)."""
    precision = precision or "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    return precision


def precision_notice(precision: str, device: str | torch.device) -> str | None:
    """What a user should know about running `precision` on `device`, if anything."""
    if precision == "fp16" and torch.device(device).type == "cpu":
        return (
            "fp16 on CPU is slow: most CPUs have no fp16 arithmetic, so it can be tens of "
            "times slower than bf16; on CPU use bf16 or fp32."
        )
    return None


def load_backbone(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    cache_dir: str | None = None,
) -> Backbone:
    """Load (once per process) an open_clip model wrapped as a `Backbone`.

    `pretrained`: an open_clip tag ('openai', 'laion2b_s34b_b79k', ...), a local checkpoint
    (.pt/.pth/.bin/.safetensors, read as plain tensors), 'hf-hub:org/repo', or None/'random'
    for randomly initialised weights (seeded, so identical in every process).
    """
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    pretrained = effective_pretrained(name, pretrained)
    key = (name, pretrained, _file_stamp(pretrained), str(torch_device), precision, cache_dir)
    with _CACHE_LOCK:
        if key not in _CACHE:
            weights = _resolve_weights(name, pretrained, cache_dir)
            model = _create_model(weights, torch_device, precision)
            info = BackboneInfo(
                name,
                pretrained,
                weights.weights_id,
                str(torch_device),
                precision,
                weights.description or pretrained,
            )
            _CACHE[key] = Backbone(model, open_clip.get_tokenizer(weights.model_name), info)
            notice = precision_notice(precision, torch_device)
            if notice:
                warnings.warn(notice, stacklevel=2)
        return _CACHE[key]


def is_loaded(
    name: str, pretrained: str | None, device: str | torch.device, precision: str
) -> bool:
    """Whether `load_backbone(name, pretrained, device, precision)` would find it loaded."""
    pretrained = effective_pretrained(name, pretrained)
    key = (name, pretrained, _file_stamp(pretrained), str(torch.device(device)), precision, None)
    with _CACHE_LOCK:
        return key in _CACHE


def effective_pretrained(name: str, pretrained: str | None) -> str:
    """The weights a load uses as the user would write them: a `local-dir:` model brings its
    own (the folder; `--pretrained` is not read), None or '' means 'random'."""
    if name.startswith("local-dir:"):
        return name
    return pretrained or RANDOM_WEIGHTS


def content_sha256(paths: list[Path]) -> str:
    """sha256 of the files' names and bytes (sorted by name), first 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def clear_backbone_cache() -> None:
    """Forget every loaded backbone (frees memory once no one else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _file_stamp(pretrained: str) -> tuple[int, int] | None:
    path = Path(pretrained)
    if path.is_file():
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    return None


def _resolve_weights(name: str, pretrained: str, cache_dir: str | None) -> _Weights:
    if pretrained.startswith("hf-hub:"):
        return _hub_repo_weights(pretrained.removeprefix("hf-hub:"), cache_dir)
    if name.startswith("local-dir:"):
        return _local_dir_weights(Path(name.removeprefix("local-dir:")).expanduser().resolve())
    _check_architecture(name)
    if pretrained == RANDOM_WEIGHTS:
        return _Weights(
            name, weights_id=f"random:seed{RANDOM_SEED}", description=f"random (seed {RANDOM_SEED})"
        )
    path = Path(pretrained).expanduser()
    if path.is_file():
        stat = path.stat()
        stamp = f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        description = f"{path.resolve()} (sha256 {content_sha256([path])})"
        return _Weights(name, checkpoint=str(path), weights_id=stamp, description=description)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        return _Weights(
            name,
            checkpoint=_tag_checkpoint(name, pretrained, tag_cfg, cache_dir),
            quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            preprocess={k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg},
            weights_id=f"tag:{name}/{pretrained}",
        )
    if path.is_dir():
        raise WeightsUnavailableError(
            f"{pretrained} is a folder; give the checkpoint file inside it, or use "
            "--model local-dir:FOLDER for a folder with open_clip_config.json."
        )
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained:
        raise WeightsUnavailableError(
            f"checkpoint file not found: {pretrained} (resolved to {path.resolve()}). "
            "Check the path, or use an open_clip tag, 'hf-hub:org/repo' or 'random'."
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise InputError(
        f"unknown weights {pretrained!r} for {name}. Known tags: {', '.join(tags) or 'none'}; "
        "or give a local checkpoint file, 'hf-hub:org/repo', or 'random'."
    )


def _local_dir_weights(folder: Path) -> _Weights:
    """A folder with open_clip_config.json and the weights (as open_clip's `local-dir:`)."""
    if not (folder / "open_clip_config.json").is_file():
        raise WeightsUnavailableError(
            f"local-dir:{folder} needs an open_clip_config.json and a checkpoint in it."
        )
    files = [p for p in folder.iterdir() if p.is_file()]
    stamps = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())
    digest = hashlib.sha256(repr(stamps).encode()).hexdigest()[:16]
    return _Weights(
        f"local-dir:{folder}",
        weights_id=f"local-dir:{folder}@{digest}",
        description=f"local-dir:{folder} (sha256 {content_sha256(files)})",
    )


def _check_architecture(name: str) -> None:
    if open_clip.get_model_config(name) is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise InputError(
            f"unknown model architecture {name!r}.{hint} See open_clip.list_models() for all names."
        )


def _tag_checkpoint(name: str, tag: str, cfg: dict, cache_dir: str | None) -> str:
    what = f"weights {tag!r} for {name}"
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        candidates = (filename,) if filename else _HUB_WEIGHT_FILES
        return hub_file(repo_id, candidates, cache_dir, what)
    url = cfg["url"]
    target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
    if not target.is_file():
        _require_network(what, tried=[f"{target} (not there)"], source=url)
    return open_clip.download_pretrained_from_url(url, cache_dir=cache_dir)


def _hub_repo_weights(repo_id: str, cache_dir: str | None) -> _Weights:
    what = f"model hf-hub:{repo_id}"
    config = hub_file(repo_id, ("open_clip_config.json",), cache_dir, what)
    hub_file(repo_id, _HUB_WEIGHT_FILES, cache_dir, what)
    snapshot = Path(config).parent
    weights_id = f"hf-hub:{repo_id}@{snapshot.name}"
    return _Weights(f"local-dir:{snapshot}", weights_id=weights_id, description=weights_id)


def hub_file(repo_id: str, filenames: tuple[str, ...], cache_dir: str | None, what: str) -> str:
    """First of `filenames` found in the HF cache; otherwise downloaded if the hub answers."""
    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True)
        except Exception:  # any miss in the cache means "not cached"
            continue
    cache = cache_dir or hf_constants.HF_HUB_CACHE
    tried = [f"Hugging Face cache {cache}: no {' / '.join(filenames)} of {repo_id}"]
    _require_network(what, tried, source=f"{hf_constants.ENDPOINT}/{repo_id}")
    last_error: Exception | None = None
    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
        except EntryNotFoundError as error:
            last_error = error
        except Exception as error:  # report any download failure the same way
            raise _unavailable(what, [*tried, f"download from {repo_id}: {error}"]) from error
    raise _unavailable(what, [*tried, f"download from {repo_id}: {last_error}"])


def _require_network(what: str, tried: list[str], source: str) -> None:
    if hf_constants.HF_HUB_OFFLINE:
        raise _unavailable(what, [*tried, "download: skipped, HF_HUB_OFFLINE is set"])
    if not hub_reachable(source):
        raise _unavailable(what, [*tried, f"download: {source} is unreachable (no internet?)"])


def hub_reachable(url: str) -> bool:
    """Can we open a TCP connection to the host of `url` within a few seconds?"""
    proxies = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(variable) for variable in proxies):
        return True  # the proxy decides; a direct probe would be wrong
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _unavailable(what: str, tried: list[str]) -> WeightsUnavailableError:
    """One line of what was tried, one `hint:` line of the ways out."""
    return WeightsUnavailableError(
        f"could not load {what}: tried {'; '.join(tried)}.\nhint: run once with internet "
        "access (the weights are then cached), or copy the Hugging Face cache "
        "(~/.cache/huggingface/hub, or HF_HUB_CACHE) and set HF_HUB_OFFLINE=1, or pass a local "
        "checkpoint (--pretrained FILE.safetensors; .pt/.bin/.pth), or use --pretrained random "
        "for an offline check (predictions are meaningless)."
    )


def _create_model(weights: _Weights, device: torch.device, precision: str) -> torch.nn.Module:
    kwargs = dict(
        pretrained=weights.checkpoint,
        precision=precision,
        device=device,
        force_quick_gelu=weights.quick_gelu,
        force_preprocess_cfg=weights.preprocess or None,
        pretrained_image=False,
        pretrained_text=False,
        weights_only=True,
    )
    try:
        if weights.checkpoint is None and not weights.model_name.startswith("local-dir:"):
            with seeded(RANDOM_SEED):
                return open_clip.create_model(weights.model_name, **kwargs)
        return open_clip.create_model(weights.model_name, **kwargs)
    except pickle.UnpicklingError as error:
        raise WeightsUnavailableError(
            f"refused to load {weights.checkpoint}: it is not a plain tensor checkpoint "
            f"(loading is weights-only, pickled code is never run). Details: {error}"
        ) from error
    except (
        RuntimeError,
        OSError,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        SafetensorError,
    ) as error:
        raise WeightsUnavailableError(
            f"could not load weights into {weights.model_name}: {error}"
        ) from error
