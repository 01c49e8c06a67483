"""Attack resolution: which pixels an attack perturbs, and the differentiable resize that
brings them to the model's input size (see docs/attack-resolution.md).

`model`: the model-size pixels `Backbone.prepare` makes (the photo resized and cropped outside
the model, on the 8-bit grid). `native`: the image's own pixels; the resize that preprocessing
would apply runs inside the attacked model, so the eps-ball is one of the data set's own
threat model (CIFAR: 32 x 32 images, as RobustBench and the released evaluation perturb them).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Protocol

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

from .errors import InputError


class PixelSource(Protocol):
    """What `attack_pixels` needs of a `Backbone` (a protocol: backbone.py imports this
    module)."""

    def native_pixels(self, image: Image.Image) -> torch.Tensor: ...

    def prepare(self, image: Image.Image) -> torch.Tensor: ...


ATTACK_RESOLUTIONS: dict[str, str] = {
    "native": "the attack perturbs the image's own pixels; the model resizes them inside, "
    "differentiably, as its preprocessing would",
    "model": "the attack perturbs the model-size pixels of the preprocessed image",
}

Size = tuple[int, int]  # (width, height), as PIL gives it
_IDENTITY_BLOCK = 512  # rows of the identity resized at once by resize_matrix


def check_attack_resolution(name: str | None) -> str | None:
    """`name` if it is an attack resolution (None: chosen from the images' sizes)."""
    if name is not None and name not in ATTACK_RESOLUTIONS:
        raise InputError(
            f"attack resolution {name!r}: use one of {', '.join(ATTACK_RESOLUTIONS)} "
            "(or leave it out: native for images smaller than the model's input)."
        )
    return name


def upsampled(size: Size, model_size: int) -> bool:
    """Whether the model's preprocessing enlarges an image of `size` (shortest side < S)."""
    return min(size) < model_size


def default_attack_resolution(sizes: Iterable[Size], model_size: int) -> str:
    """`native` when every image is smaller than the model's input and all have one size
    (so that they batch), else `model` (decided at the first image that is neither)."""
    first = None
    for size in sizes:
        first = first or size
        if size != first or not upsampled(size, model_size):
            return "model"
    return "model" if first is None else "native"


def one_size(sizes: Iterable[Size]) -> Size:
    """The one size of a native-resolution batch run; refuses images of several sizes."""
    first = None
    for size in sizes:
        first = first or size
        if size != first:
            raise InputError(
                f"--attack-resolution native batches the images at their own size, and these "
                f"have several ({first[0]}x{first[1]}, {size[0]}x{size[1]}, ...); use "
                "--attack-resolution model, or resize the data set to one size first."
            )
    if first is None:
        raise InputError("no images to attack.")
    return first


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(size): the shortest side becomes `size`,
    the other keeps the aspect ratio (truncated), as in `Backbone.prepare`."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_like_preprocess(
    pixels: torch.Tensor, size: int, interpolation: InterpolationMode
) -> torch.Tensor:
    """(B, 3, H, W) pixels in [0, 1] -> (B, 3, size, size), differentiably: the shortest side
    resized to `size` with `interpolation` (antialiased, PIL's filter), then the centre
    size x size crop; what `Backbone.prepare` does to an 8-bit photo with PIL. Like PIL, the
    width is resized first and each pass is clamped to [0, 1]; PIL also rounds each pass to
    8 bits, which a differentiable resize cannot (the two differ by at most 1.2/255, tested).
    Pixels already size x size pass unchanged.

    Each pass is a matrix product with the pass's resize matrix (`resize_matrix`): the same
    numbers as torch's antialiased interpolation, whose CUDA backward has no deterministic
    implementation, while a matrix product's has."""
    height, width = pixels.shape[-2:]
    if (height, width) == (size, size):
        return pixels
    new_height, new_width = resized_size(height, width, size)
    if new_width != width:
        matrix = resize_matrix(width, new_width, interpolation, pixels.device, pixels.dtype)
        pixels = (pixels @ matrix.T).clamp(0, 1)
    if new_height != height:
        matrix = resize_matrix(height, new_height, interpolation, pixels.device, pixels.dtype)
        pixels = (matrix @ pixels).clamp(0, 1)
    return TF.center_crop(pixels, [size, size])


@functools.lru_cache(maxsize=32)
def resize_matrix(
    length: int,
    new_length: int,
    interpolation: InterpolationMode,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(new_length, length): the linear map torchvision's antialiased resize applies along
    one axis, read off by resizing the identity (row i of it is pixel i alone), in blocks of
    rows so that a long side never needs the whole identity at once. Built outside inference
    mode: the matrix is cached, and a first call under `torch.inference_mode` (the evaluation's
    clean pass) would otherwise cache an inference tensor that no later attack could
    differentiate through."""
    blocks = []
    with torch.inference_mode(False), torch.no_grad():
        for start in range(0, length, _IDENTITY_BLOCK):
            pixel = torch.arange(start, min(start + _IDENTITY_BLOCK, length), device=device)
            alone = F.one_hot(pixel, length).to(dtype)[:, None, None, :]
            resized = TF.resize(alone, [1, new_length], interpolation=interpolation, antialias=True)
            blocks.append(resized[:, 0, 0, :])
        return torch.cat(blocks).T.contiguous()


class ResizedInput(nn.Module):
    """`module` taking pixels of any size: they are resized to the model's input inside,
    differentiably (`resize_like_preprocess`), so an attack perturbs the pixels it is given.
    Model-size pixels pass unchanged."""

    def __init__(self, module: nn.Module, size: int, interpolation: InterpolationMode) -> None:
        super().__init__()
        self.module = module
        self.size = size
        self.interpolation = interpolation
        self.train(module.training)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module(resize_like_preprocess(pixels, self.size, self.interpolation))


def attack_pixels(backbone: PixelSource, image: Image.Image, resolution: str) -> torch.Tensor:
    """The (3, H, W) pixels an attack at `resolution` perturbs: the image's own (`native`)
    or the model-size ones of `Backbone.prepare` (`model`)."""
    if resolution == "native":
        return backbone.native_pixels(image)
    return backbone.prepare(image)
