"""The prior's text condition for CLIPure-Diff: the null prompt ("a photo of a .")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import Backbone
from ..errors import InputError
from ..prompts import null_prompts, resolve_templates

ENCODING_MODES = ("tokens", "pooled")
DEFAULT_EOS_ID = 49407


@dataclass(frozen=True)
class TextCondition:
    """(D,) unit-norm text embedding and (L, D) per-token encodings (zero rows = padding)."""

    text_embed: torch.Tensor
    text_encodings: torch.Tensor


@torch.no_grad()
def null_condition(
    backbone: Backbone, templates: str | Sequence[str] = "ensemble", encodings: str = "tokens"
) -> TextCondition:
    """The null prompt, averaged over the templates, as the prior's condition.

    encodings="tokens": the text tower's final-layer-norm outputs, zeroed after the first end
    token (what the prior was trained on). "pooled" reproduces the reference evaluation code,
    which put the pooled text embedding at every token position instead.
    """
    if encodings not in ENCODING_MODES:
        raise InputError(f"text encodings {encodings!r}: use one of {', '.join(ENCODING_MODES)}.")
    prompts = null_prompts(resolve_templates(templates))
    tokens = backbone.tokenize(prompts)
    captured: list[torch.Tensor] = []
    handle = None
    if encodings == "tokens":
        final_norm = getattr(backbone.model, "ln_final", None)
        if final_norm is None:
            raise InputError(
                f"{backbone.info.name} has no final text layer norm to take token encodings "
                "from; use text_encodings='pooled' or a prior without token encodings."
            )
        handle = final_norm.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        pooled = backbone.model.encode_text(tokens).float()
    finally:
        if handle is not None:
            handle.remove()
    eos_id = getattr(backbone.tokenizer, "eot_token_id", DEFAULT_EOS_ID)
    before_eos = (tokens == eos_id).long().cumsum(dim=-1) == 0
    keep = F.pad(before_eos, (1, -1), value=True) & (tokens != 0)  # up to and incl. the EOS
    if encodings == "tokens":
        per_token = captured[0].float()
    else:
        per_token = pooled[:, None, :].expand(-1, tokens.shape[1], -1)
    per_token = per_token.masked_fill(~keep[..., None], 0.0)
    return TextCondition(
        text_embed=F.normalize(pooled, dim=-1).mean(dim=0),
        text_encodings=per_token.mean(dim=0),
    )
