"""Float16 arithmetic emulated with float32 kernels: the release's model, fast on a CPU.

Most CPUs have no float16 arithmetic, so PyTorch runs a float16 model there ~30-50x slower
than in float32. The release's image tower (release.py) is emulated instead: its float16
weights rounded to float16 values and kept in float32 storage, and every tensor the float16
model stores rounded to float16 the same way, forward and backward:

- forward: every floating tensor an operation of the tower returns is rounded to float16
  (in the release every activation of the tower is float16: its input is cast to float16,
  and its float32 parameters are either cast to the activations' dtype before use, as the
  class and positional embeddings, or only read inside LayerNorm, as PyTorch does in half);
  inside an operation (LayerNorm's statistics, softmax, the sums of a matrix product) the
  arithmetic is float32, as PyTorch's float16 kernels on the CPU accumulate in float32;
- backward: every gradient that reaches a rounded tensor is rounded to float16, so a
  gradient below float16's smallest subnormal (2**-24) becomes exactly 0 where the release's
  did: at the cast of the tower's float16 output to float32.

Attention is split at the float16 model's own boundaries (the packed input projection, the
fused attention, the output projection). The differences left are float32 summation orders
and the rounding of each gradient contribution before (float16) or after (here) autograd
sums them; how close the two are is measured in docs/release-precision.md.
"""

from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_MHA_PARAMETERS = inspect.signature(F.multi_head_attention_forward).parameters


def round_to_half(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s values rounded to the nearest float16 (ties to even, subnormals, overflow
    to inf), in `tensor`'s own dtype."""
    return tensor.to(torch.float16).to(tensor.dtype)


class _RoundToHalf(torch.autograd.Function):
    """Rounds to float16 values forward, and the gradient that reaches it backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return round_to_half(tensor)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        return round_to_half(gradient)


def stored_as_half(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as the float16 model stores it: rounded forward, its gradient rounded
    backward (float32 storage)."""
    return _RoundToHalf.apply(tensor)


def _rounded(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return stored_as_half(value)
    if isinstance(value, tuple | list):
        return type(value)(_rounded(item) for item in value)
    return value


def _attention(*args: object, **kwargs: object) -> tuple[torch.Tensor, None]:
    """`F.multi_head_attention_forward` for self-attention without masks or dropout (the
    image towers'), rounded where the float16 model stores its tensors."""
    bound = inspect.Signature(list(_MHA_PARAMETERS.values())).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    unsupported = (
        a["bias_k"] is not None
        or a["add_zero_attn"]
        or (a["training"] and a["dropout_p"] > 0)
        or a["key_padding_mask"] is not None
        or a["attn_mask"] is not None
        or a["use_separate_proj_weight"]
        or a["is_causal"]
        or not (a["query"] is a["key"] is a["value"])
    )
    if unsupported:
        raise NotImplementedError(
            "emulated float16 supports unmasked self-attention only (the image towers'); "
            "use release precision float16."
        )
    query = a["query"]  # (L, B, E): nn.MultiheadAttention passes it sequence first
    length, batch, width = query.shape
    heads = a["num_heads"]
    packed = stored_as_half(F.linear(query, a["in_proj_weight"], a["in_proj_bias"]))
    q, k, v = (
        part.reshape(length, batch, heads, width // heads).permute(1, 2, 0, 3)
        for part in packed.chunk(3, dim=-1)
    )
    mixed = stored_as_half(F.scaled_dot_product_attention(q, k, v))
    mixed = mixed.permute(2, 0, 1, 3).reshape(length, batch, width)
    out = stored_as_half(F.linear(mixed, a["out_proj_weight"], a["out_proj_bias"]))
    return out, None


class _HalfActivations(TorchFunctionMode):
    """While active, every floating tensor a torch function returns is `stored_as_half`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.multi_head_attention_forward:
            return _attention(*args, **(kwargs or {}))
        return _rounded(func(*args, **(kwargs or {})))


class EmulatedHalf(nn.Module):
    """A copy of `module` run as its float16 version would run, in float32 arithmetic.

    `half_parameters` names the parameters the float16 model holds in float16 (the others it
    keeps in float32); their values are rounded to float16 here. The input is rounded as the
    float16 model's input cast; the output holds the float16 output's values in float32."""

    def __init__(self, module: nn.Module, half_parameters: set[str]) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).eval()
        self.module.requires_grad_(False)
        for name, parameter in self.module.named_parameters():
            if name in half_parameters:
                parameter.data = round_to_half(parameter.data)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with _HalfActivations():
            return self.module(stored_as_half(inputs))
