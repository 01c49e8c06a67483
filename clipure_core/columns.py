"""Columns: a defence on a backbone (`DEFENSE@BACKBONE`), each one model of a request.

`--defense clipure_cos,none@fare2-l14,clipure_cos@fare2-l14` asks for CLIPure on the start-up
backbone, FARE itself, and CLIPure on FARE. The spec is split at its first `@`; the backbone
is a catalog alias (`BACKBONE_ALIASES`), `ARCH:PRETRAINED` (split at its first colon) or
`local-dir:FOLDER`. A column on the start-up backbone keeps today's name (`clipure_cos`,
`undefended`); a column on another backbone is named as written, `DEFENSE@BACKBONE`, with
`none` for the undefended model (`none@fare2-l14`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from .errors import InputError
from .loading import RANDOM_WEIGHTS
from .purifiers import check_defense, model_title

UNDEFENDED = "undefended"
NONE = "none"
LOCAL_DIR = "local-dir:"

# alias -> (open_clip architecture, pretrained); the app's model catalog, by short name
BACKBONE_ALIASES: dict[str, tuple[str, str]] = {
    "openai-b32": ("ViT-B-32", "openai"),
    "laion2b-b32": ("ViT-B-32", "laion2b_s34b_b79k"),
    "openai-b16": ("ViT-B-16", "openai"),
    "openai-l14": ("ViT-L-14", "openai"),
    "fare4-b32": ("ViT-B-32", "hf-hub:chs20/FARE4-ViT-B-32-laion2B-s34B-b79K"),
    "tecoa4-b32": ("ViT-B-32", "hf-hub:chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K"),
    "fare2-l14": ("ViT-L-14", "hf-hub:chs20/fare2-clip"),
    "tecoa2-l14": ("ViT-L-14", "hf-hub:chs20/tecoa2-clip"),
}
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class BackboneRef:
    """A backbone as a column names it: `spec` as written, and what `load_backbone` takes."""

    spec: str
    name: str  # open_clip architecture, or local-dir:/absolute/folder
    pretrained: str

    @property
    def key(self) -> tuple[str, str]:
        """Identity: a local folder is its resolved path, whatever the weights tag says."""
        if self.name.startswith(LOCAL_DIR):
            return (self.name, "")
        return (self.name, self.pretrained)


@dataclass(frozen=True)
class Column:
    """One model of a request: `defense` (None: undefended) on `backbone` (None: the
    start-up backbone), shown and keyed as `name`."""

    name: str
    defense: str | None
    backbone: BackboneRef | None


def home_ref(name: str, pretrained: str | None) -> BackboneRef:
    """The start-up backbone (`--model`, `--pretrained`) as a `BackboneRef`."""
    return _ref(name, name, pretrained or RANDOM_WEIGHTS)


def parse_backbone(spec: str) -> BackboneRef:
    """An alias, `ARCH:PRETRAINED` or `local-dir:FOLDER`; refused (InputError) before any
    weights are read when the alias, architecture or folder is unknown."""
    spec = spec.strip()
    if spec.startswith(LOCAL_DIR):
        folder = Path(spec.removeprefix(LOCAL_DIR)).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise InputError(
                f"backbone {spec!r}: {folder} is not a folder with an open_clip_config.json."
            )
        return _ref(spec, spec, RANDOM_WEIGHTS)
    if ":" in spec:
        name, pretrained = spec.split(":", 1)
        if not name or not pretrained:
            raise InputError(f"backbone {spec!r}: write ARCH:PRETRAINED, both non-empty.")
        if open_clip.get_model_config(name) is None:
            raise InputError(f"backbone {spec!r}: unknown open_clip architecture {name!r}.")
        return _ref(spec, name, pretrained)
    if spec not in BACKBONE_ALIASES:
        raise InputError(
            f"unknown backbone {spec!r}: use one of {', '.join(BACKBONE_ALIASES)}, "
            "ARCH:PRETRAINED or local-dir:FOLDER."
        )
    return _ref(spec, *BACKBONE_ALIASES[spec])


def _ref(spec: str, name: str, pretrained: str) -> BackboneRef:
    if name.startswith(LOCAL_DIR):
        folder = Path(name.removeprefix(LOCAL_DIR)).expanduser().resolve()
        name = f"{LOCAL_DIR}{folder}"
    return BackboneRef(spec, name, pretrained)


def parse_column(spec: str, home: BackboneRef | None = None) -> Column:
    """`DEFENSE` or `DEFENSE@BACKBONE` (split at the first `@`). A column whose backbone is
    `home` (the start-up one) gets the plain name."""
    spec = spec.strip()
    defense, at, backbone = spec.partition("@")
    defense, backbone = defense.strip(), backbone.strip()
    if at and (not defense or not backbone):
        raise InputError(f"column {spec!r}: write DEFENSE@BACKBONE, both sides non-empty.")
    if defense != NONE:
        check_defense(defense)
    ref = parse_backbone(backbone) if at else None
    if ref is not None and home is not None and ref.key == home.key:
        ref = None
    kept = None if defense == NONE else defense
    if ref is None:
        return Column(kept or UNDEFENDED, kept, None)
    return Column(f"{defense}@{ref.spec}", kept, ref)


def parse_columns(specs: Iterable[str] | str, home: BackboneRef | None = None) -> list[Column]:
    """Columns of a comma-separated spec (or a list), in order, without repeats; the
    undefended start-up model is not listed (every request has it first)."""
    if isinstance(specs, str):
        specs = specs.split(",")
    unique: dict[str, Column] = {}
    for spec in specs:
        if spec.strip():
            column = parse_column(spec, home)
            unique.setdefault(column.name, column)
    return [column for name, column in unique.items() if name != UNDEFENDED]


def column_title(name: str) -> str:
    """Display title of a column: the defence's title, and its backbone after an `@`
    ('clipure_cos@fare2-l14' -> 'CLIPure-Cos @ fare2-l14'); a `local-dir:` backbone by its
    folder's name, short enough for a card (the JSON and the reproduce command keep the path)."""
    defense, at, backbone = name.partition("@")
    title = model_title(UNDEFENDED if defense == NONE else defense)
    if backbone.startswith(LOCAL_DIR):
        backbone = Path(backbone.removeprefix(LOCAL_DIR).rstrip("/")).name or backbone
    return f"{title} @ {backbone}" if at else title


def estimated_bytes(ref: BackboneRef, precision: str) -> int | None:
    """Weights' size of `ref` in `precision`, from its architecture (built on the meta
    device: nothing is allocated or read but the config); None when the architecture's text
    tower is a Hugging Face model (its size is in a config on the hub)."""
    if ref.name.startswith(LOCAL_DIR):
        config_file = Path(ref.name.removeprefix(LOCAL_DIR)) / "open_clip_config.json"
        config = json.loads(config_file.read_text())["model_cfg"]
    else:
        config = open_clip.get_model_config(ref.name)
    config = dict(config)
    if "hf_model_name" in config.get("text_cfg", {}):
        return None
    model_class = open_clip.CLIP  # as open_clip's factory picks it
    if config.pop("custom_text", False):
        model_class = open_clip.CoCa if "multimodal_cfg" in config else open_clip.CustomTextCLIP
    with torch.device("meta"):
        model = model_class(**config)
    return sum(p.numel() for p in model.parameters()) * _BYTES.get(precision, 4)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` (CUDA: the driver's count; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(ref: BackboneRef, device: torch.device, precision: str) -> None:
    """Refuse (InputError) a backbone whose weights do not fit in `device`'s free memory
    (one whose size is unknown, `estimated_bytes` None, is not refused)."""
    need, free = estimated_bytes(ref, precision), available_bytes(device)
    if need is not None and free is not None and need > free:
        raise InputError(
            f"backbone {ref.spec!r} needs about {need / 2**20:.0f} MiB for its weights "
            f"({precision}) but {device} has {free / 2**20:.0f} MiB free."
        )
