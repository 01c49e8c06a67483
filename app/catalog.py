"""The backbones offered in the model dropdown."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelChoice:
    label: str
    name: str
    pretrained: str


CATALOG: tuple[ModelChoice, ...] = (
    ModelChoice("ViT-B/32 · OpenAI", "ViT-B-32", "openai"),
    ModelChoice("ViT-B/32 · LAION-2B", "ViT-B-32", "laion2b_s34b_b79k"),
    ModelChoice("ViT-B/16 · OpenAI", "ViT-B-16", "openai"),
    ModelChoice("ViT-L/14 · OpenAI", "ViT-L-14", "openai"),
    ModelChoice(
        "ViT-B/32 · FARE4 (robust, LAION-2B)",
        "ViT-B-32",
        "hf-hub:chs20/FARE4-ViT-B-32-laion2B-s34B-b79K",
    ),
    ModelChoice(
        "ViT-B/32 · TeCoA4 (robust, LAION-2B)",
        "ViT-B-32",
        "hf-hub:chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K",
    ),
    ModelChoice("ViT-L/14 · FARE2 (robust)", "ViT-L-14", "hf-hub:chs20/fare2-clip"),
    ModelChoice("ViT-L/14 · TeCoA2 (robust)", "ViT-L-14", "hf-hub:chs20/tecoa2-clip"),
)


def model_choices(start_name: str, start_pretrained: str) -> list[ModelChoice]:
    """The catalog, with the start-up model first (added if it is not in the catalog)."""
    for choice in CATALOG:
        if (choice.name, choice.pretrained) == (start_name, start_pretrained):
            return [choice, *(c for c in CATALOG if c is not choice)]
    label = f"{start_name} · {start_pretrained}"
    return [ModelChoice(label, start_name, start_pretrained), *CATALOG]
