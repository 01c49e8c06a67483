"""What a run tells its reader about how to read its numbers (stored in results.json)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .config import EvalConfig

PAPER = (
    "threat 'paper' holds the purifier's inner gradient constant, as the released evaluation "
    "did. In fp32 with per-sample purification steps that gradient is attenuated (by about "
    "30^-10 for CLIPure-Cos) but not zero, and its signal points the right way (partly buried "
    "in float32 round-off, by an amount that varies per image), so sign-based L-inf attacks "
    "can still make progress; it is not what masked the release. The release's masking came "
    "from fp16 (the attenuated gradient underflows to exactly 0), batch coupling at batch size "
    "2 (the gradient drowns in round-off) and the small-norm guards of L2 attacks: threat "
    "'release' and --protocol release reproduce it. Compare with 'bpda' and 'full'."
)
BPDA = (
    "threat 'bpda' is only valid where purification is smooth: an embedding more than "
    "atan(step size) (88.09 degrees for 30) from the null prompt is flipped by ~176 degrees "
    "and its exact gradient is minus BPDA's. Read 'full' beside 'bpda'."
)
RELEASE = (
    "protocol release reproduces the released evaluation (fp16 backbone parts, inner "
    "gradient constant, batch-coupled purification in pairs): its robust accuracy shows what "
    "the paper measured, not robustness; compare with a --protocol adaptive run "
    "(python -m clipure_core.evaluate compare RELEASE_DIR ADAPTIVE_DIR)."
)
RELEASE_CPU = (
    "protocol release runs the backbone in fp16 (--release-precision float16), which is slow "
    "on CPU (ViT-B-32: seconds per forward and backward); use a GPU for more than a few "
    "images, or the default on CPU, --release-precision emulated."
)
RELEASE_THREAT_CUSTOM = (
    "threat 'release' crafts each image against the release's float16 model; this protocol "
    "then classifies it with the run's own model (float32, per-image steps). For the "
    "release's own predictions, paired as it paired them, use --protocol release."
)
RELEASE_SUBSET = (
    "protocol release evaluates this run's seeded, class-stratified subset, not the release's "
    "robustbench image list; the adversarial images are not rounded to 8 bits, as in the release."
)


def run_notices(
    config: EvalConfig, stochastic: Mapping[str, bool], device: torch.device
) -> list[str]:
    """The notices for `config`, given which models are stochastic."""
    defended = bool(config.defenses)
    notices = []
    if "paper" in config.threats and defended:
        notices.append(PAPER)
    if "bpda" in config.threats and defended:
        notices.append(BPDA)
    if "release" in config.threats and config.protocol != "release":
        notices.append(RELEASE_THREAT_CUSTOM)
    if config.protocol == "release":
        notices.append(RELEASE)
        notices.append(RELEASE_SUBSET)
        if device.type == "cpu" and config.release_precision == "float16":
            notices.append(RELEASE_CPU)
    method = config.attack_config(config.eps[0]).method
    for model, random in stochastic.items():
        if not random:
            continue
        eot, draws = config.eot_for(method, True), config.draws_for(True)
        notices.append(
            f"{model} is stochastic: attacked with EOT {eot} (gradients averaged over {eot} "
            f"draws) and counted robust only if all {draws} evaluation draws are right."
        )
        if config.protocol != "release" and (eot == 1 or draws == 1):
            notices.append(
                f"{model}: with EOT {eot} and {draws} evaluation draw(s) its robust accuracy is "
                "optimistic; use --protocol adaptive (EOT 20, 10 draws)."
            )
    return notices
