"""A CLIP model whose image encoder takes [0, 1] pixels and differentiates through them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip import get_input_dtype, get_model_preprocess_cfg
from PIL import Image
from torch import nn
from torchvision.transforms import CenterCrop, InterpolationMode, Resize

from .encoding_memo import encoded
from .errors import InputError
from .images import check_aspect_ratio, normalize_image
from .pixels import pil_to_pixels
from .resolution import resize_like_preprocess
from .text_encoder import TEXT_BATCH, BatchCallback, encode_prompts, fallback_reason


@dataclass(frozen=True)
class BackboneInfo:
    """Where a backbone's weights came from; enough to reproduce it and to key caches."""

    name: str
    pretrained: str  # as the user gave it ("random" for random weights)
    weights_id: str  # stable identity of the weights (tag, hub commit, file stamp, seed)
    device: str
    precision: str
    weights: str = ""  # what was loaded, for people: tag, file or folder with its sha256

    @property
    def random_weights(self) -> bool:
        return self.weights_id.startswith("random")


class Backbone(nn.Module):
    """open_clip model + its tokenizer, with preprocessing split in two parts.

    `prepare` (not differentiable) turns a photo into the model-size [0, 1] pixels that the
    threat model perturbs; `encode_image` (differentiable) normalises with the model's own
    mean/std and encodes. Parameters are frozen: attacks differentiate w.r.t. pixels only.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], info: BackboneInfo
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.info = info
        cfg = get_model_preprocess_cfg(model)
        size = cfg["size"]
        if not isinstance(size, int):
            if size[0] != size[1]:
                raise InputError(f"{info.name}: non-square input size {size} is not supported.")
            size = size[0]
        self.image_size: int = int(size)
        self.interpolation = InterpolationMode(cfg.get("interpolation", "bicubic"))
        self.input_dtype = get_input_dtype(info.precision) or torch.float32
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.to(info.device)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp()

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """Photo -> (3, S, S) float pixels in [0, 1] on the 8-bit grid, on the model's device.

        `images.normalize_image` makes the upright 8-bit RGB picture (first frame of an
        animation, EXIF orientation, 16-bit scaled to 8, transparency on white, CMYK and
        palettes to RGB); the shortest side is resized to S with the model's interpolation
        and the centre S x S is cropped. Aspect ratios over `images.MAX_ASPECT_RATIO` are
        refused (the resized intermediate would be huge).
        """
        check_aspect_ratio(image.width, image.height)
        image = normalize_image(image)
        image = Resize(self.image_size, interpolation=self.interpolation)(image)
        image = CenterCrop(self.image_size)(image)
        return pil_to_pixels(image).to(self.device)

    def native_pixels(self, image: Image.Image) -> torch.Tensor:
        """Photo -> (3, H, W) float pixels in [0, 1] at its own size (the upright 8-bit RGB
        picture of `prepare`, before resizing), on the model's device; `to_model_size` then
        does the rest of `prepare`, differentiably."""
        check_aspect_ratio(image.width, image.height)
        return pil_to_pixels(normalize_image(image)).to(self.device)

    def to_model_size(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, 3, S, S): `prepare`'s resize and centre crop in
        differentiable torch ops (see resolution.resize_like_preprocess); S x S passes as is."""
        return resize_like_preprocess(pixels, self.image_size, self.interpolation)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels in [0, 1] -> (B, D) float32 embeddings (not normalised)."""
        if pixels.dim() != 4 or pixels.shape[1:] != (3, self.image_size, self.image_size):
            raise InputError(
                f"expected pixels of shape (B, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(pixels.shape)}; use Backbone.prepare on the photo first."
            )

        def encode() -> torch.Tensor:
            normalised = (pixels.to(self.device) - self.mean) / self.std
            return self.model.encode_image(normalised.to(self.input_dtype)).float()

        return encoded(self, pixels, encode)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    @property
    def text_at_prompt_length(self) -> bool:
        """Whether the text tower runs at the prompts' own length (see text_encoder.py)
        rather than through the model's padded `encode_text`."""
        return fallback_reason(self.model) is None

    @torch.no_grad()
    def encode_text(
        self,
        texts: Sequence[str],
        batch_size: int = TEXT_BATCH,
        on_batch: BatchCallback | None = None,
    ) -> torch.Tensor:
        """List of N strings -> (N, D) float32 embeddings (not normalised), equal to the
        model's `encode_text` (to float rounding) but at the prompts' own length where the
        text tower allows it. `on_batch(done)` comes before each batch and after the last;
        raising from it stops before the next batch."""
        return encode_prompts(self.model, self.tokenizer, texts, self.device, batch_size, on_batch)

    def normalized_text(
        self, texts: Sequence[str], on_batch: BatchCallback | None = None
    ) -> torch.Tensor:
        """Unit-norm text embeddings, (N, D)."""
        return F.normalize(self.encode_text(texts, on_batch=on_batch), dim=-1)
