"""Images/s of batch evaluation in the AutoAttack setting, measured in one run.

    python bench/eval_throughput.py [--model ViT-B-32] [--device cpu|cuda] [--steps 100]
        [--n 64] [--batch-sizes 1,8,64] [--scaling-batch-size 64] [--scaling-n 128]

The setting is the paper's: APGD-CE + APGD-T (9 targets), `--steps` iterations each, L-inf
eps 4/255, against CLIPure-Cos under the 'paper' threat model, 80-template text embeddings
(cached). Prints:
  - images/s for each batch size (n = max(--n, batch size) images each), in process;
  - on a GPU, the paper's released setting measured the same way: batch size 2, fp16 weights,
    batch-coupled gradient normalisation; and the ratio of batch 64 to it (target >= 10);
  - images/s of 1 and 2 processes (torchrun; gloo, or NCCL with one GPU per process) on the
    same images, and the ratio.
Random weights (`--pretrained random`) give the same timings as trained ones and run offline.
The synthetic images are labelled with the defended model's own clean predictions, so every
image is attacked (APGD skips images that are already misclassified).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import print_flags

from clipure_core import ZeroShotClassifier, build_purifier, load_backbone
from clipure_core.evaluate import EvalConfig, run_evaluation
from clipure_core.evaluate.data import ArrayDataset
from clipure_core.prompts import CIFAR10_CLASSNAMES

ROOT = Path(__file__).resolve().parents[1]
CLASSES = list(CIFAR10_CLASSNAMES)  # sorted, so an ImageFolder of them keeps this order
MODEL = "clipure_cos"
THREAT = "paper"


def synthetic_dataset(args: argparse.Namespace, count: int) -> ArrayDataset:
    """`count` random images at the model's input size, labelled with CLIPure-Cos's clean
    predictions."""
    backbone = load_backbone(args.model, args.pretrained, args.device)
    size = backbone.image_size
    images = np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    classifier = ZeroShotClassifier(backbone, CLASSES, "ensemble")
    purifier = build_purifier(MODEL, backbone, "ensemble")
    labels = []
    with torch.no_grad():
        for start in range(0, count, 64):
            pixels = torch.from_numpy(images[start : start + 64]).permute(0, 3, 1, 2)
            z = backbone.encode_image(pixels.float().div(255).to(backbone.device))
            labels += classifier.logits_from_embeddings(purifier(z)).argmax(-1).tolist()
    return ArrayDataset("synthetic", images, CLASSES, labels)


def measure(args, dataset, out: Path, batch_size: int, n: int, **overrides) -> float:
    """Images/s of the evaluation loop (model loading and text embeddings excluded)."""
    config = EvalConfig(
        data="synthetic",
        out=out,
        model=args.model,
        pretrained=args.pretrained,
        device=args.device,
        n=n,
        batch_size=batch_size,
        attack="autoattack",
        eps=(4.0,),
        steps=args.steps,
        threats=(THREAT,),
        models=(MODEL,),
        progress=False,
        **overrides,
    )
    outcome = run_evaluation(config, dataset=dataset)
    return outcome.results["timings"]["this_invocation"]["images_per_s"]


def write_image_folder(dataset: ArrayDataset, root: Path) -> None:
    for name in dataset.classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        label = dataset.classes[dataset.targets[index]]
        dataset.image(index).save(root / label / f"{index:05d}.png")


def measure_processes(args, data: Path, out: Path, processes: int) -> float:
    """Images/s of `processes` torchrun ranks evaluating the same images."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), "-m", "clipure_core.evaluate"]
    command += ["--data", str(data), "--model", args.model, "--pretrained", args.pretrained]
    command += ["--num-images", str(args.scaling_n), "--batch-size", str(args.scaling_batch_size)]
    command += ["--attack", "autoattack", "--steps", str(args.steps), "--eps", "4"]
    command += ["--threat", THREAT, "--defense", MODEL, "--out", str(out), "--no-progress"]
    if args.device:
        command += ["--device", args.device]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ)
    if done.returncode:
        raise SystemExit(f"{processes}-process run failed:\n{done.stderr[-4000:]}")
    results = json.loads((out / "results.json").read_text())
    return results["timings"]["this_invocation"]["images_per_s"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/eval_throughput.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture")
    parser.add_argument(
        "--pretrained", default="random", help="weights (timing does not depend on them)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--steps", type=int, default=100, help="APGD iterations (paper: 100)")
    parser.add_argument("--n", type=int, default=64, help="images per batch-size measurement")
    parser.add_argument("--batch-sizes", default="1,8,64", help="comma-separated batch sizes timed")
    parser.add_argument(
        "--scaling-batch-size", type=int, default=64, help="batch size of the 1 vs 2 process run"
    )
    parser.add_argument(
        "--scaling-n", type=int, default=128, help="images of the 1 vs 2 process run"
    )
    parser.add_argument(
        "--skip-scaling", action="store_true", help="skip the 1 vs 2 process (torchrun) run"
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print_flags(args)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    device_type = "cuda" if (args.device or "").startswith("cuda") else "cpu"
    if args.device is None and torch.cuda.is_available():
        device_type = "cuda"
    count = max(args.n, *batch_sizes, args.scaling_n)
    dataset = synthetic_dataset(args, count)
    print(
        f"AutoAttack (APGD-CE + APGD-T, {args.steps} steps), L-inf 4/255, {MODEL} under "
        f"'{THREAT}', {args.model} ({args.pretrained}), {device_type}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        measure(args, dataset, scratch / "warm-up", min(batch_sizes), min(batch_sizes))
        speeds = {}
        for size in batch_sizes:
            n = max(args.n, size)
            speeds[size] = measure(args, dataset, scratch / f"b{size}", size, n)
            ratio = speeds[size] / speeds[batch_sizes[0]]
            print(
                f"  batch {size:>3}: {speeds[size]:8.3f} images/s ({n} images), "
                f"x{ratio:.2f} vs batch {batch_sizes[0]}"
            )
        if device_type == "cuda":
            paper = measure(
                args,
                dataset,
                scratch / "paper",
                2,
                args.n,
                precision="fp16",
                defense_settings={MODEL: {"batch_coupled": True}},
            )
            best = max(speeds.values())
            print(f"  paper's released setting (batch 2, fp16): {paper:.3f} images/s")
            print(f"  best batch size / paper's setting: x{best / paper:.1f} (target >= 10)")
        else:
            print("  paper's released setting (fp16 weights) needs a GPU: not measured")
        if not args.skip_scaling:
            data = scratch / "images"
            write_image_folder(dataset, data)
            one = measure_processes(args, data, scratch / "p1", 1)
            two = measure_processes(args, data, scratch / "p2", 2)
            print(
                f"  processes (batch {args.scaling_batch_size}, {args.scaling_n} images): "
                f"1: {one:.3f} images/s, 2: {two:.3f} images/s, x{two / one:.2f}"
            )


if __name__ == "__main__":
    main()
