"""Train a small latent prior on a backbone's image embeddings of a folder of images."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..backbone import Backbone
from ..errors import InputError
from ..seeding import seeded
from ..text_embeddings import cache_root
from .conditioning import null_condition
from .config import PriorConfig
from .loading import CONFIG_METADATA_KEY
from .model import LatentPrior

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class TrainingReport:
    images: int
    epochs: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch


def small_prior_config(dim: int, depth: int = 6, heads: int = 8, dim_head: int = 64) -> PriorConfig:
    """The family of the LAION prior, sized for minutes on one GPU: conditioned on the null
    prompt's embedding only (no per-token encodings, so no padding tokens to attend over)."""
    return PriorConfig(
        dim=dim,
        depth=depth,
        heads=heads,
        dim_head=dim_head,
        ff_mult=4,
        normformer=True,
        num_timesteps=1000,
        timesteps=1000,
        max_text_len=0,
        loss_type="l2",
        condition_on_text_encodings=False,
    )


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}.")
    return files


@torch.no_grad()
def embed_folder(backbone: Backbone, folder: Path, batch_size: int = 64) -> torch.Tensor:
    """(N, D) unit image embeddings of every image under `folder`, cached on disk."""
    files = image_files(folder)
    stamps = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(
        json.dumps(
            [backbone.info.name, backbone.info.weights_id, backbone.info.precision, stamps]
        ).encode()
    ).hexdigest()
    cache = cache_root() / "embeddings" / f"{key}.safetensors"
    if cache.is_file():
        return load_file(str(cache), device=str(backbone.device))["embeddings"]
    chunks = []
    for start in tqdm(range(0, len(files), batch_size), desc="embedding images", unit="batch"):
        pixels = torch.stack(
            [_prepare(backbone, path) for path in files[start : start + batch_size]]
        )
        chunks.append(F.normalize(backbone.encode_image(pixels), dim=-1))
    embeddings = torch.cat(chunks)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": embeddings.cpu().contiguous()}, str(cache))
    return embeddings


def _prepare(backbone: Backbone, path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return backbone.prepare(image)
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(f"cannot read image {path}: {error}") from error


def train_prior(
    backbone: Backbone,
    embeddings: torch.Tensor,
    config: PriorConfig,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-4,
    seed: int = 0,
    templates: str | Sequence[str] = "ensemble",
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[LatentPrior, TrainingReport]:
    """Fit `config`'s prior to unit `embeddings` (denoising loss at uniform timesteps)."""
    if config.dim != embeddings.shape[-1]:
        raise InputError(f"prior dim {config.dim} != embedding dim {embeddings.shape[-1]}.")
    with seeded(seed):
        prior = LatentPrior(config).to(embeddings.device)
    condition = null_condition(backbone, templates)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    report = TrainingReport(images=len(embeddings), epochs=epochs)
    prior.train()
    for epoch in tqdm(range(epochs), desc="training prior", unit="epoch"):
        order = torch.randperm(len(embeddings), generator=generator)
        total, batches = 0.0, math.ceil(len(embeddings) / batch_size)
        for start in range(0, len(embeddings), batch_size):
            z = embeddings[order[start : start + batch_size]] * config.embed_scale
            times = torch.randint(0, config.timesteps, (len(z),), generator=generator)
            noise = torch.randn(z.shape, generator=generator)
            loss = prior.denoise_loss(
                z,
                times.to(z.device),
                noise.to(z.device),
                condition.text_embed.expand(len(z), -1),
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        report.losses.append(total / batches)
        if on_epoch is not None:
            on_epoch(epoch, report.losses[-1])
    return prior.eval().requires_grad_(False), report


def save_prior(prior: LatentPrior, out: Path, backbone: Backbone, report: TrainingReport) -> None:
    """Write the weights (safetensors, config in its metadata) and a JSON beside them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    config = prior.config.to_dict()
    # clone: the rotary frequencies are one tensor shared by every layer
    state = {key: value.detach().cpu().clone() for key, value in prior.state_dict().items()}
    save_file(state, str(out), metadata={CONFIG_METADATA_KEY: json.dumps(config)})
    info = backbone.info
    summary = {
        "prior": config,
        "backbone": {
            "model": info.name,
            "pretrained": info.pretrained,
            "weights_id": info.weights_id,
        },
        "text_condition": "null prompt embedding (templates averaged), no token encodings",
        "training": {
            "images": report.images,
            "epochs": report.epochs,
            "loss_per_epoch": report.losses,
        },
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
