"""The released evaluation's model, reproduced: which parameters it ran in half precision.

The authors' evaluation script casts to float16 every CLIP parameter whose name contains
"mlp", "attn", "conv1" or "proj" (so the attention and MLP weights, the patch embedding and
the output projection), keeps the layer norms, class and positional embeddings in float32,
feeds the image encoder a float16 input, and computes embeddings, purification and logits in
float32. The purifier's inner gradient is computed without a graph (our "paper" mode) and its
step is normalised over the whole batch. A gradient that the purifier attenuates to ~1e-16 of
its size underflows to exactly 0 in float16: that, not the purification, is what stopped the
published attacks (see docs/attacks.md, threat models).

`precision` picks how that float16 tower runs: "float16" runs it (slow on CPUs, which mostly
lack float16 arithmetic), "emulated" runs float32 kernels with float16 rounding at the same
tensor boundaries, forward and backward (half_emulation.py; docs/release-precision.md
measures how closely the two agree). The default is "emulated" on CPU, "float16" on CUDA.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from .backbone import Backbone
from .classifier import ZeroShotClassifier
from .encoding_memo import encoded
from .errors import InputError
from .half_emulation import EmulatedHalf
from .purifiers import Purifier

HALF_PARAMETER_KEYS = ("mlp", "attn", "conv1", "proj")  # substrings of the names cast to fp16
FULL_PRECISION_KEYS = ("ln_",)  # layer norms stay float32 even where a key above matches

RELEASE_PRECISIONS = ("emulated", "float16")

_ENCODERS: weakref.WeakKeyDictionary[Backbone, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def default_release_precision(device: torch.device | str) -> str:
    """ "float16" where float16 arithmetic is fast (CUDA), "emulated" elsewhere."""
    return "float16" if torch.device(device).type == "cuda" else "emulated"


def check_release_precision(precision: str | None, device: torch.device | str) -> str:
    """`precision` (None: the device's default), or an InputError naming the choices."""
    if precision is None:
        return default_release_precision(device)
    if precision not in RELEASE_PRECISIONS:
        raise InputError(
            f"release precision {precision!r}: use one of {', '.join(RELEASE_PRECISIONS)}."
        )
    return precision


def released_as_half(name: str) -> bool:
    """Whether the release cast the parameter called `name` to float16."""
    if any(key in name for key in FULL_PRECISION_KEYS):
        return False
    return any(key in name for key in HALF_PARAMETER_KEYS)


def cast_like_release(module: nn.Module) -> nn.Module:
    """Cast `module`'s parameters to float16 where the release did (in place); returns it."""
    for name, parameter in module.named_parameters():
        if released_as_half(name):
            parameter.data = parameter.data.half()
    return module


def release_image_encoder(backbone: Backbone, precision: str = "float16") -> nn.Module:
    """`backbone`'s image tower as the release cast it (one copy per backbone and precision):
    float16 parameters ("float16"), or their float16 values run by `EmulatedHalf`
    ("emulated", which takes and returns float32)."""
    precision = check_release_precision(precision, backbone.device)
    encoders = _ENCODERS.setdefault(backbone, {})
    if precision not in encoders:
        visual = backbone.model.visual
        if precision == "float16":
            encoder = cast_like_release(copy.deepcopy(visual))
        else:
            half = {name for name, _ in visual.named_parameters() if released_as_half(name)}
            encoder = EmulatedHalf(visual, half)
        encoders[precision] = encoder.eval().requires_grad_(False)
    return encoders[precision]


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
    in the release's precision. `precision`: "float16" or "emulated" (None: the device's
    default; see the module doc); `self.precision` says which runs.
    """

    def __init__(
        self,
        classifier: ZeroShotClassifier,
        purifier: Purifier | None = None,
        precision: str | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.purifier = coupled_view(purifier) if purifier is not None else None
        self.precision = check_release_precision(precision, classifier.backbone.device)
        self.encoder = release_image_encoder(classifier.backbone, self.precision)
        self.eval()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels in [0, 1] -> (B, D) float32 embeddings via the fp16 tower."""
        backbone = self.classifier.backbone

        def encode() -> torch.Tensor:
            normalised = (pixels.to(backbone.device) - backbone.mean) / backbone.std
            if self.precision == "float16":
                return self.encoder(normalised.half()).float()
            return self.encoder(normalised)

        return encoded(self.encoder, pixels, encode)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self.encode(pixels)
        if self.purifier is not None:
            z = self.purifier(z, gradient="paper")
        return self.classifier.logits_from_embeddings(z)
