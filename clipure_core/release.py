"""The released evaluation's model, reproduced: which parameters it ran in half precision.

The authors' evaluation script casts to float16 every CLIP parameter whose name contains
"mlp", "attn", "conv1" or "proj" (so the attention and MLP weights, the patch embedding and
the output projection), keeps the layer norms, class and positional embeddings in float32,
feeds the image encoder a float16 input, and computes embeddings, purification and logits in
float32. The purifier's inner gradient is computed without a graph (our "paper" mode) and its
step is normalised over the whole batch. A gradient that the purifier attenuates to ~1e-16 of
its size underflows to exactly 0 in float16: that, not the purification, is what stopped the
published attacks (see docs/attacks.md, threat models).
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from .backbone import Backbone
from .classifier import ZeroShotClassifier
from .purifiers import Purifier

HALF_PARAMETER_KEYS = ("mlp", "attn", "conv1", "proj")  # substrings of the names cast to fp16
FULL_PRECISION_KEYS = ("ln_",)  # layer norms stay float32 even where a key above matches

_ENCODERS: weakref.WeakKeyDictionary[Backbone, nn.Module] = weakref.WeakKeyDictionary()


def cast_like_release(module: nn.Module) -> nn.Module:
    """Cast `module`'s parameters to float16 where the release did (in place); returns it."""
    for name, parameter in module.named_parameters():
        if any(key in name for key in FULL_PRECISION_KEYS):
            continue
        if any(key in name for key in HALF_PARAMETER_KEYS):
            parameter.data = parameter.data.half()
    return module


def release_image_encoder(backbone: Backbone) -> nn.Module:
    """A copy of `backbone`'s image tower cast as the release cast it (one per backbone)."""
    encoder = _ENCODERS.get(backbone)
    if encoder is None:
        encoder = cast_like_release(copy.deepcopy(backbone.model.visual)).eval()
        encoder.requires_grad_(False)
        _ENCODERS[backbone] = encoder
    return encoder


def coupled_view(purifier: Purifier) -> Purifier:
    """`purifier` normalising each step over the whole batch, as the released code did.

    A shallow copy: it shares the purifier's tensors and changes nothing in the original.
    """
    view = copy.copy(purifier)
    view.batch_coupled = True
    return view


class ReleaseClassifier(nn.Module):
    """The classifier (and purifier) as the released evaluation ran them; see the module doc.

    Both its forward (the release's predictions) and its backward (the gradient the release's
    attacks saw) are the release's. With `purifier=None` it is the undefended zero-shot CLIP
    in the release's precision.
    """

    def __init__(self, classifier: ZeroShotClassifier, purifier: Purifier | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.purifier = coupled_view(purifier) if purifier is not None else None
        self.encoder = release_image_encoder(classifier.backbone)
        self.eval()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels in [0, 1] -> (B, D) float32 embeddings via the fp16 tower."""
        backbone = self.classifier.backbone
        normalised = (pixels.to(backbone.device) - backbone.mean) / backbone.std
        return self.encoder(normalised.half()).float()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self.encode(pixels)
        if self.purifier is not None:
            z = self.purifier(z, gradient="paper")
        return self.classifier.logits_from_embeddings(z)
