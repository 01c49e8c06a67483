"""Defaults shared by the command lines (predict, audit, evaluate) and the app."""

DEFAULT_MODEL = "ViT-B-32"  # open_clip architecture
DEFAULT_WEIGHTS = "openai"  # open_clip pretrained tag
