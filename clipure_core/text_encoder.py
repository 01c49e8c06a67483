"""Text embeddings at the prompts' own length.

open_clip's `CLIP.encode_text` runs every prompt padded to the full context (77 tokens), while
prompt templates are 8-20 tokens long. In the `CLIP` class the text transformer is causal
(token i attends to tokens <= i only) and the embedding is read at one position, the end
token's ("argmax" or "eos" pooling), so the outputs at and before that position do not depend
on anything after it: running the tower on the first L tokens, L = 1 + the largest pooled
position of the batch, gives the same embeddings. `encode_prompts` does that with the model's
own modules (token embedding, the positional embedding and causal mask sliced to L, the
transformer, final norm, `text_global_pool`, projection), prompts sorted by length into
batches. Any other model (`CustomTextCLIP` and Hugging Face text towers, other pooling, a
non-causal mask, a subclass with its own `encode_text`) goes through its `encode_text`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool
from torch import nn

TEXT_BATCH = 256  # prompts per forward pass
END_TOKEN_POOLING = ("argmax", "eos")

BatchCallback = Callable[[int], None]  # prompts done so far; raising stops before the next batch


def fallback_reason(model: nn.Module) -> str | None:
    """None when `model`'s text tower can run at the prompts' own length, else why not."""
    if not isinstance(model, CLIP):
        return f"{type(model).__name__} is not open_clip's CLIP class"
    if type(model).encode_text is not CLIP.encode_text:
        return f"{type(model).__name__} overrides encode_text"
    pool_type = getattr(model, "text_pool_type", None)
    if pool_type not in END_TOKEN_POOLING:
        return f"text pooling {pool_type!r} is not end-token pooling"
    mask = getattr(model, "attn_mask", None)
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return "the text transformer has no causal attention mask"
    size = mask.shape[0]
    causal = torch.full((size, size), float("-inf"), device=mask.device).triu_(1)
    if not torch.equal(mask.float(), causal):
        return "the text attention mask is not causal"
    if model.positional_embedding.shape[0] != size:
        return "the positional embedding does not match the attention mask"
    return None


def pooled_positions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(N,) the position each prompt's embedding is read from, found with open_clip's own
    pooling helper applied to the positions themselves."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    positions = positions.expand(tokens.shape[0], -1)[..., None]
    eos = getattr(model, "text_eos_id", None)
    return text_global_pool(positions, tokens, model.text_pool_type, eos_token_id=eos)[:, 0]


def encode_at_length(model: CLIP, tokens: torch.Tensor, length: int) -> torch.Tensor:
    """`model.encode_text(tokens)` computed on the first `length` tokens only; exact when
    every prompt's pooled position is < `length` (see the module's docstring)."""
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=model.text_eos_id)
    if model.text_projection is not None:
        if isinstance(model.text_projection, nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return x


@torch.no_grad()
def encode_tokens(
    model: nn.Module,
    tokens: torch.Tensor,
    batch_size: int = TEXT_BATCH,
    on_batch: BatchCallback | None = None,
) -> torch.Tensor:
    """(N, L) token ids -> (N, D) float32 embeddings (not normalised), in the input order.

    Where `fallback_reason(model)` is None, prompts are sorted by length and each batch runs
    at its own longest prompt's length; otherwise batches go through `model.encode_text`.
    `on_batch(done)` is called before each batch and after the last, with the number of
    prompts finished; an exception it raises ends the encoding before the next batch.
    """
    count = tokens.shape[0]
    if fallback_reason(model) is not None:
        order = torch.arange(count, device=tokens.device)
        lengths = None
    else:
        lengths = pooled_positions(model, tokens) + 1
        order = torch.argsort(lengths, stable=True)
    chunks = []
    for start in range(0, count, batch_size):
        if on_batch is not None:
            on_batch(start)
        index = order[start : start + batch_size]
        if lengths is None:
            chunks.append(model.encode_text(tokens[index]).float())
        else:
            length = int(lengths[index].max())
            chunks.append(encode_at_length(model, tokens[index], length).float())
    if on_batch is not None:
        on_batch(count)
    if not chunks:
        return torch.empty(0, 0, device=tokens.device)
    embeddings = torch.cat(chunks)
    return torch.empty_like(embeddings).index_copy_(0, order, embeddings)


def encode_prompts(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = TEXT_BATCH,
    on_batch: BatchCallback | None = None,
) -> torch.Tensor:
    """List of N strings -> (N, D) float32 embeddings (not normalised); see `encode_tokens`."""
    tokens = tokenizer(list(texts)).to(device)
    return encode_tokens(model, tokens, batch_size, on_batch)
