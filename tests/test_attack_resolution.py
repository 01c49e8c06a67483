"""Attack resolution: the differentiable resize equals the model's preprocessing, and
`--attack-resolution native` perturbs a small data set's own pixels (evaluate and audit)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import CenterCrop, InterpolationMode, Resize

from clipure_core import AttackConfig, Playground, ZeroShotClassifier, craft_attack, load_backbone
from clipure_core.audit import run_audit
from clipure_core.audit.dataset import audit_dataset
from clipure_core.cli import main as clipure_main
from clipure_core.errors import InputError
from clipure_core.evaluate.cli import main as evaluate_main
from clipure_core.evaluate.config import EvalConfig
from clipure_core.evaluate.data import load_dataset
from clipure_core.pixels import pil_to_pixels
from clipure_core.purifiers import build_purifier
from clipure_core.resolution import (
    default_attack_resolution,
    resize_like_preprocess,
    resize_matrix,
)
from clipure_core.threats import attacked_model

from .conftest import CLASSES, LABELS, TINY_MODEL

# Deterministic cuBLAS needs this before CUDA starts (for the `cuda` test below).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
FIXTURES = Path(__file__).parent / "fixtures"
SMALL = 16  # the small images' side; the tiny model's input is 32 x 32
PER_CLASS = 2
EPS_4 = 0.01568627450980392  # 4/255
L2_BOUND_16 = 0.43470927  # 4/255 * sqrt(3 * 16 * 16): the L2 norm of a full L-inf 4/255 step
# Sizes (height, width) and model sides: upsampled square / non-square, downsampled, CIFAR.
SIZES = [(16, 16, 32), (8, 8, 32), (16, 24, 32), (24, 16, 32), (48, 40, 32), (32, 32, 224)]


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    """Random 8-bit RGB: the worst case for a resize (overshoots at every pixel)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def prepared(image: Image.Image, size: int) -> torch.Tensor:
    """`Backbone.prepare`'s resize, for any model side."""
    resized = Resize(size, interpolation=InterpolationMode.BICUBIC)(image)
    return pil_to_pixels(CenterCrop(size)(resized))


def pil_float_filter(image: Image.Image, size: int) -> np.ndarray:
    """PIL's bicubic filter in float ('F' images, no 8-bit rounding): width, then height,
    each clamped to [0, 1] as PIL's 8-bit passes are; then the centre crop."""
    pixels = np.asarray(image, dtype=np.float32) / 255
    height = pixels.shape[0]
    new_width, new_height = Resize(size)(image).size  # torchvision's size rule, on PIL
    top, left = round((new_height - size) / 2), round((new_width - size) / 2)
    channels = []
    for c in range(3):
        plane = Image.fromarray(pixels[:, :, c], mode="F").resize((new_width, height), 3)
        plane = Image.fromarray(np.clip(np.asarray(plane), 0, 1), mode="F")
        plane = np.clip(np.asarray(plane.resize((new_width, new_height), 3)), 0, 1)
        channels.append(plane[top : top + size, left : left + size])
    return np.stack(channels)


@pytest.mark.parametrize(("height", "width", "size"), SIZES)
def test_resize_is_the_preprocessing_filter(height, width, size):
    image = noise(height, width)
    ours = resize_like_preprocess(pil_to_pixels(image)[None], size, InterpolationMode.BICUBIC)[0]
    # PIL's filter to float32 rounding:
    assert np.abs(ours.numpy() - pil_float_filter(image, size)).max() <= 1e-5
    # the model's 8-bit preprocessing, which rounds each of its two passes to 8 bits:
    reference = prepared(image, size)
    assert ours.shape == reference.shape == (3, size, size)
    assert (ours - reference).abs().max() <= 1.2 / 255


def test_the_clamp_between_passes_is_needed():
    """PIL clamps its first (8-bit) pass; one unclamped resize of both sides is far off."""
    image = noise(SMALL, SMALL)
    x = pil_to_pixels(image)[None]
    single = TF.resize(x, [32, 32], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert (single.clamp(0, 1)[0] - prepared(image, 32)).abs().max() > 10 / 255


def test_resize_against_the_releases_resize():
    """The release enlarged CIFAR inside its model with resize_right (cubic, zero padding);
    tests/fixtures/make_release_resize.py made the fixture (an 8 x 8 image at scale 7)."""
    golden = load_file(str(FIXTURES / "release_resize.safetensors"))
    image = golden["image"].permute(2, 0, 1)[None].float() / 255
    release = golden["resized"].permute(2, 0, 1)
    ours = resize_like_preprocess(image, 56, InterpolationMode.BICUBIC)[0]
    difference = (ours - release).abs()
    # the same cubic filter away from the borders: output pixel o reads input pixel -1 while
    # (o + 0.5) / 7 - 0.5 < 1, so the outer 10 output pixels on each side differ
    assert difference[:, 10:46, 10:46].max() <= 1e-6
    # within them the release reads zeros past the edge, the preprocessing does not:
    assert difference[:, 9:47, 9:47].max() > 0.01
    assert 0.51 < difference.max() < 0.53


def test_resize_matrix_is_torchvisions_resize():
    """Across the identity blocks of a long side (1300 > 512 rows), up and down."""
    x = torch.rand(2, 3, 5, 1300)
    for new in (224, 2000):
        matrix = resize_matrix(1300, new, InterpolationMode.BICUBIC, x.device, x.dtype)
        expected = TF.resize(x, [5, new], interpolation=InterpolationMode.BICUBIC, antialias=True)
        assert (x @ matrix.T - expected).abs().max() <= 1e-5


@pytest.mark.cuda
def test_native_gradients_on_cuda_with_deterministic_algorithms(tiny_checkpoint):
    """torch's antialiased interpolation has no deterministic CUDA backward; ours must."""
    backbone = load_backbone(TINY_MODEL, str(tiny_checkpoint), "cuda")
    classifier = ZeroShotClassifier(backbone, LABELS, "single")
    purifier = build_purifier("clipure_cos", backbone, "single", steps=2)
    module = attacked_model(classifier, purifier, "full", resize_input=True)
    pixels = torch.rand(2, 3, SMALL, SMALL, generator=torch.Generator().manual_seed(0))
    gradients = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            x = pixels.cuda().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(module(x), torch.tensor([0, 1]).cuda())
            (gradient,) = torch.autograd.grad(loss, x)
            gradients.append(gradient.cpu())
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(gradients[0], gradients[1]) and gradients[0].abs().sum() > 0
    on_cpu = resize_like_preprocess(pixels, 32, InterpolationMode.BICUBIC)
    on_cuda = resize_like_preprocess(pixels.cuda(), 32, InterpolationMode.BICUBIC).cpu()
    assert (on_cuda - on_cpu).abs().max() <= 1e-5


def test_model_size_pixels_pass_unchanged(backbone):
    pixels = torch.rand(2, 3, 32, 32)
    assert backbone.to_model_size(pixels) is pixels


def test_default_resolution_from_the_sizes():
    assert default_attack_resolution([(32, 32)] * 3, 224) == "native"  # CIFAR
    assert default_attack_resolution([(40, 16)], 32) == "native"  # shortest side 16 < 32
    assert default_attack_resolution([(16, 16), (20, 20)], 32) == "model"  # two sizes
    assert default_attack_resolution([(32, 32)], 32) == "model"
    assert default_attack_resolution([(500, 375), (32, 32)], 224) == "model"


def test_native_and_prepared_pixels_give_the_same_clean_decisions(backbone):
    classifier = ZeroShotClassifier(backbone, LABELS, "single")
    images = [noise(SMALL, SMALL, seed) for seed in range(8)]
    with torch.no_grad():
        native = torch.stack([backbone.native_pixels(image) for image in images])
        resized = classifier(backbone.to_model_size(native))
        reference = classifier(torch.stack([backbone.prepare(image) for image in images]))
    assert native.shape == (8, 3, SMALL, SMALL)
    assert resized.argmax(dim=-1).tolist() == reference.argmax(dim=-1).tolist()


def test_attacked_module_differentiates_the_native_pixels(backbone):
    classifier = ZeroShotClassifier(backbone, LABELS, "single")
    purifier = build_purifier("clipure_cos", backbone, "single", steps=2)
    module = attacked_model(classifier, purifier, "full", resize_input=True)
    x = torch.rand(1, 3, SMALL, SMALL, requires_grad=True)
    torch.nn.functional.cross_entropy(module(x), torch.tensor([0])).backward()
    assert x.grad.shape == (1, 3, SMALL, SMALL) and x.grad.abs().sum() > 0
    big = torch.rand(1, 3, 32, 32)
    unwrapped = attacked_model(classifier, purifier, "full")
    with torch.no_grad():
        assert torch.equal(module(big), unwrapped(big))


def test_a_resize_first_made_in_inference_mode_can_be_differentiated():
    """The evaluation's clean pass (under `torch.inference_mode`) is the first to resize; the
    cached resize matrices must still serve the attack's backward pass afterwards."""
    resize_matrix.cache_clear()
    with torch.inference_mode():
        resize_like_preprocess(torch.rand(1, 3, 13, 11), 32, InterpolationMode.BICUBIC)
    x = torch.rand(1, 3, 13, 11, requires_grad=True)
    resize_like_preprocess(x, 32, InterpolationMode.BICUBIC).sum().backward()
    assert x.grad.shape == (1, 3, 13, 11) and x.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """4 classes x 2 random 16 x 16 images."""
    root = tmp_path_factory.mktemp("small")
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            noise(SMALL, SMALL, seed=10 * c + i).save(root / name / f"{i}.png")
    return root


def run_args(model_dir, data, out, resolution: str | None = None) -> list[str]:
    chosen = [] if resolution is None else ["--attack-resolution", resolution]
    return [
        "--data", str(data), "--model", f"local-dir:{model_dir}", "--templates", "single",
        "--num-images", str(len(CLASSES) * PER_CLASS), "--batch-size", "4", "--attack", "pgd",
        "--steps", "3", "--eps", "4", "--threat", "bpda", "--defense", "none,clipure_cos",
        "--cos-steps", "2", "--out", str(out), "--no-progress", *chosen,
    ]  # fmt: skip


def evaluate(model_dir, data, out, resolution: str | None = None) -> tuple[dict, list[dict]]:
    assert evaluate_main(run_args(model_dir, data, out, resolution)) == 0
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return json.loads((out / "results.json").read_text()), rows


def test_small_images_are_attacked_at_their_own_resolution(
    tiny_model_dir, small_folder, tmp_path, capsys
):
    results, rows = evaluate(tiny_model_dir, small_folder, tmp_path / "native")
    summary = capsys.readouterr().out
    assert "attacked at native resolution (16x16; linf/l2 in these pixels)" in summary
    assert "native: 16x16 pixels perturbed" in (tmp_path / "native" / "report.html").read_text()
    # a resume must match it: the same --out at the other resolution is refused
    assert evaluate_main(run_args(tiny_model_dir, small_folder, tmp_path / "native", "model")) == 2
    assert "attack_resolution" in capsys.readouterr().err
    settings = results["settings"]
    assert settings["attack_resolution"] == "native"
    assert settings["attack_image_size"] == {"width": 16, "height": 16}
    linf = [float(row["linf"]) for row in rows]
    l2 = [float(row["l2"]) for row in rows]
    assert max(linf) == EPS_4 and max(l2) <= L2_BOUND_16
    assert all(entry["max_l2"] <= L2_BOUND_16 for entry in results["robust"])

    # clean predictions are those of native pixels -> differentiable resize -> encoder
    backbone = load_backbone(f"local-dir:{tiny_model_dir}", device="cpu")
    classifier = ZeroShotClassifier(backbone, settings["data"]["classes"], "single")
    for row in rows:
        if row["model"] == "undefended":
            native = backbone.native_pixels(Image.open(small_folder / row["image"]))[None]
            with torch.no_grad():
                predicted = classifier(backbone.to_model_size(native)).argmax().item()
            assert int(row["clean_index"]) == predicted

    results, rows = evaluate(tiny_model_dir, small_folder, tmp_path / "model", "model")
    assert results["settings"]["attack_resolution"] == "model"
    assert results["settings"]["attack_image_size"] == {"width": 32, "height": 32}
    assert max(float(row["linf"]) for row in rows) == EPS_4
    assert max(float(row["l2"]) for row in rows) > 0.44  # 32 x 32 pixels: past the 16 x 16 bound
    capsys.readouterr()
    assert (
        evaluate_main(["compare", str(tmp_path / "native"), str(tmp_path / "model"), "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["differing_settings"] == ["attack_resolution"]


def test_native_needs_one_image_size(image_folder, tmp_path, capsys):
    """Refused before any model work: the model named does not even exist."""
    args = [
        "--data", str(image_folder), "--model", "local-dir:" + str(tmp_path / "no-model"),
        "--out", str(tmp_path / "out"), "--attack-resolution", "native", "--no-progress",
    ]  # fmt: skip
    assert evaluate_main(args) == 2
    assert "batches the images at their own size" in capsys.readouterr().err


def test_release_protocol_on_cifar_perturbs_its_own_pixels(tmp_path):
    config = EvalConfig(data="cifar10", out=tmp_path, protocol="release")
    assert config.attack_resolution == "native"
    with pytest.raises(InputError, match="--attack-resolution native"):
        EvalConfig(data="cifar10", out=tmp_path, protocol="release", attack_resolution="model")
    assert EvalConfig(data="cifar10", out=tmp_path).attack_resolution is None  # by size


def test_release_protocol_attacks_small_images_at_their_own_resolution(
    tiny_model_dir, small_folder, tmp_path
):
    out = tmp_path / "release"
    args = [
        "--data", str(small_folder), "--model", f"local-dir:{tiny_model_dir}", "--protocol",
        "release", "--num-images", "8", "--steps", "2", "--defense", "none", "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    assert evaluate_main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["attack_resolution"] == "native"
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    linf = [float(row["linf"]) for row in rows]  # not rounded to 8 bits, as in the release
    assert 0.015 < max(linf) <= EPS_4 + 1e-7  # one image fooled (this tiny model, these images)
    assert max(float(row["l2"]) for row in rows) <= L2_BOUND_16


def test_audit_of_small_images_perturbs_their_pixels(small_folder, tiny_checkpoint, capsys):
    common = [
        "--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--steps", "1",
        "--conditions", "full", "--checks", "randomness", "--json", "--quiet",
    ]  # fmt: skip
    assert clipure_main(["audit", "--data", str(small_folder), "--num-images", "2", *common]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["attack_resolution"] == "native"
    assert settings["attack_image_size"] == {"width": 16, "height": 16}
    photo = str(small_folder / CLASSES[0] / "0.png")
    assert clipure_main(["audit", photo, "--labels", "cat,dog", *common]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["attack_resolution"] == "native"
    code = clipure_main(
        ["audit", photo, "--labels", "cat,dog", "--attack-resolution", "model", *common]
    )
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert code == 0 and settings["attack_image_size"] == {"width": 32, "height": 32}


def test_audit_sizes_and_the_library_default(backbone, small_folder, image_folder):
    playground = Playground(backbone, "single")
    photo = Image.open(small_folder / CLASSES[0] / "0.png")
    quick = {"conditions": "clean", "checks": "randomness", "defenses": ()}
    assert run_audit(playground, photo, LABELS, **quick).settings["attack_resolution"] == "model"
    chosen = run_audit(playground, photo, LABELS, attack_resolution=None, **quick)
    assert chosen.settings["attack_resolution"] == "native"
    dataset = load_dataset(str(image_folder))
    mixed = audit_dataset(playground, dataset, num_images=3, attack_resolution="native", **quick)
    settings = mixed.to_dict()["settings"]
    assert settings["attack_resolution"] == "native"
    assert settings["attack_image_size"] is None  # these 3 images differ in size


L2_SQUARE_REFUSAL = (
    "square at L2 runs torchattacks' L2 Square, which needs square images; these are 24x16. "
    "Use --attack-resolution model (square model-size pixels), --norm linf, or another attack."
)


def test_l2_square_on_images_that_are_not_square_is_refused(
    tiny_model_dir, tiny_checkpoint, tmp_path, capsys
):
    """torchattacks' L2 Square tiles square images only (it crashed on 16 x 24 pixels); only
    `native` gives other shapes. Refused with the way out, before anything is encoded."""
    folder = tmp_path / "wide"
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        noise(16, 24, seed=c).save(folder / name / "0.png")
    args = [
        "--data", str(folder), "--model", f"local-dir:{tiny_model_dir}", "--templates", "single",
        "--attack", "square", "--norm", "l2", "--eps", "0.5", "--steps", "2", "--threat", "full",
        "--defense", "none", "--out", str(tmp_path / "out"), "--no-progress",
    ]  # fmt: skip
    assert evaluate_main(args) == 2
    assert capsys.readouterr().err == f"error: {L2_SQUARE_REFUSAL}\n"
    audit = [
        "audit", str(folder / CLASSES[0] / "0.png"), "--labels", "cat,dog", "--model",
        TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--norm", "l2", "--eps", "0.5",
        "--steps", "1", "--square-queries", "2", "--conditions", "clean,square", "--quiet",
    ]  # fmt: skip
    assert clipure_main(audit) == 2
    assert capsys.readouterr().err == f"error: {L2_SQUARE_REFUSAL}\n"
    assert clipure_main([*audit, "--attack-resolution", "model", "--json"]) == 0  # 32 x 32
    pixels = torch.rand(1, 3, 16, 24)
    config = AttackConfig(method="square", norm="l2", eps=0.5, steps=2)
    with pytest.raises(InputError, match="needs square images"):
        craft_attack(torch.nn.Identity(), pixels, torch.tensor([0]), config)
