"""load_backbone through its real paths: local files, the HF cache, tags, errors."""

from __future__ import annotations

import io

import open_clip
import pytest
import torch
from huggingface_hub import constants as hf_constants
from open_clip.transformer import QuickGELU
from PIL import Image
from safetensors.torch import load_file

from clipure_core import InputError, WeightsUnavailableError, load_backbone
from clipure_core.loading import clear_backbone_cache

from .conftest import TINY_MODEL, fill_hf_cache, save_tiny_weights


def test_local_safetensors_and_pt_files_give_the_saved_weights(tmp_path, tiny_checkpoint):
    pt_path = tmp_path / "tiny.pt"
    save_tiny_weights(pt_path)
    expected = load_file(str(tiny_checkpoint))
    for path in (tiny_checkpoint, pt_path):
        backbone = load_backbone(TINY_MODEL, pretrained=str(path), device="cpu")
        state = backbone.model.state_dict()
        assert torch.equal(state["visual.conv1.weight"], expected["visual.conv1.weight"])
        assert backbone.image_size == 32
        assert not backbone.info.random_weights


def test_loading_twice_returns_the_cached_model(tiny_checkpoint):
    first = load_backbone(TINY_MODEL, pretrained=str(tiny_checkpoint), device="cpu")
    assert load_backbone(TINY_MODEL, pretrained=str(tiny_checkpoint), device="cpu") is first


def test_random_weights_are_seeded_and_flagged():
    clear_backbone_cache()
    first = load_backbone(TINY_MODEL, pretrained="random", device="cpu")
    clear_backbone_cache()
    second = load_backbone(TINY_MODEL, pretrained=None, device="cpu")
    assert second is not first
    assert first.info.random_weights
    assert torch.equal(first.model.visual.conv1.weight, second.model.visual.conv1.weight)


def test_encode_image_normalises_inside_and_is_differentiable(backbone):
    pixels = torch.rand(2, 3, 32, 32, requires_grad=True)
    z = backbone.encode_image(pixels)
    assert z.shape == (2, 32)
    expected = backbone.model.encode_image((pixels - backbone.mean) / backbone.std)
    assert torch.allclose(z, expected)
    assert torch.allclose(backbone.mean.flatten(), torch.tensor(open_clip.OPENAI_DATASET_MEAN))
    z.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert backbone.encode_text(["a photo of a cat.", "a dog"]).shape == (2, 32)
    with pytest.raises(InputError, match="shape"):
        backbone.encode_image(torch.rand(1, 3, 64, 64))


def test_prepare_resizes_shortest_side_and_crops_centre(backbone):
    image = Image.new("RGB", (96, 48), (0, 0, 0))
    image.paste((255, 0, 0), (40, 0, 56, 48))  # a red band in the middle
    pixels = backbone.prepare(image)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    assert torch.equal(pixels, (pixels * 255).round() / 255)  # on the 8-bit grid
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert pixels[0, :, 16].min() > 0.9 and pixels[0, :, 0].max() < 0.1


def test_prepare_honours_exif_rotation_and_composites_alpha(backbone):
    portrait = Image.new("RGB", (64, 32), (0, 0, 0))
    portrait.paste((255, 255, 255), (0, 0, 32, 32))  # white on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    portrait.save(buffer, format="JPEG", exif=exif, quality=95)
    rotated = backbone.prepare(Image.open(buffer))
    # Displayed upright the image is 32 wide x 64 tall, white on top: the centre crop is the
    # middle of that column, white in its upper half.
    assert rotated[:, :8].mean() > 0.9 and rotated[:, -8:].mean() < 0.1
    transparent = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert torch.equal(backbone.prepare(transparent), torch.ones(3, 32, 32))


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(InputError, match=r"unknown model architecture 'ViT-B-33'.*ViT-B-32"):
        load_backbone("ViT-B-33", pretrained="random", device="cpu")


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(InputError, match=r"unknown weights 'openia'.*openai"):
        load_backbone("ViT-B-32", pretrained="openia", device="cpu")


def test_missing_checkpoint_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(WeightsUnavailableError, match="checkpoint file not found"):
        load_backbone(TINY_MODEL, pretrained=str(missing), device="cpu")


def test_no_internet_fails_fast_with_every_fix(tmp_path, no_network):
    with pytest.raises(WeightsUnavailableError) as raised:
        load_backbone("ViT-B-32", "openai", device="cpu", cache_dir=str(tmp_path))
    message = str(raised.value)
    assert "timm/vit_base_patch32_clip_224.openai" in message
    assert "unreachable" in message
    for fix in ("HF_HUB_OFFLINE=1", "--pretrained random", ".safetensors", str(tmp_path)):
        assert fix in message


def test_offline_mode_is_named_in_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE is set"):
        load_backbone("ViT-B-32", "laion2b_s34b_b79k", device="cpu", cache_dir=str(tmp_path))


def test_tag_from_hf_cache_offline_gets_quickgelu(tmp_path, monkeypatch, no_network):
    """An OpenAI-style tag (quick_gelu=True) loads from the HF cache without a network and
    builds QuickGELU activations, which open_clip would otherwise only warn about."""
    weights = tmp_path / "w.safetensors"
    save_tiny_weights(weights, seed=7, quick_gelu=True)
    fill_hf_cache(
        tmp_path, "clipure-tests/tiny-openai", {"open_clip_model.safetensors": weights.read_bytes()}
    )
    tags = {
        "openai": {
            "hf_hub": "clipure-tests/tiny-openai/",
            "quick_gelu": True,
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
        }
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_MODEL, tags)
    backbone = load_backbone(TINY_MODEL, "openai", device="cpu", cache_dir=str(tmp_path))
    activations = [m for m in backbone.model.modules() if isinstance(m, QuickGELU)]
    assert activations, "OpenAI weights need QuickGELU"
    assert backbone.info.weights_id == f"tag:{TINY_MODEL}/openai"
    assert torch.allclose(backbone.std.flatten(), torch.tensor([0.25] * 3))
    expected = load_file(str(weights))["visual.conv1.weight"]
    assert torch.equal(backbone.model.visual.conv1.weight, expected)


def test_hf_hub_id_from_cache_offline(tmp_path, no_network):
    import json

    from .conftest import TINY_CONFIG

    weights = tmp_path / "w.safetensors"
    save_tiny_weights(weights, seed=3)
    config = {"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}
    fill_hf_cache(
        tmp_path,
        "clipure-tests/tiny-hub",
        {
            "open_clip_config.json": json.dumps(config).encode(),
            "open_clip_model.safetensors": weights.read_bytes(),
        },
    )
    backbone = load_backbone("any", "hf-hub:clipure-tests/tiny-hub", "cpu", cache_dir=str(tmp_path))
    assert backbone.info.weights_id.startswith("hf-hub:clipure-tests/tiny-hub@0123456789")
    expected = load_file(str(weights))["visual.conv1.weight"]
    assert torch.equal(backbone.model.visual.conv1.weight, expected)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": _Payload(marker)}, checkpoint)
    with pytest.raises(WeightsUnavailableError, match=r"refused to load .*pickled code"):
        load_backbone(TINY_MODEL, pretrained=str(checkpoint), device="cpu")
    assert not marker.exists()


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsUnavailableError, match="could not load weights"):
        load_backbone(TINY_MODEL, pretrained=str(broken), device="cpu")


def test_device_and_precision_are_validated(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA GPU"):
        load_backbone(TINY_MODEL, "random", device="cuda")
    with pytest.raises(InputError, match="precision 'fp8': use one of fp32, fp16, bf16"):
        load_backbone(TINY_MODEL, "random", device="cpu", precision="fp8")
    assert load_backbone(TINY_MODEL, "random").device.type == "cpu"


def test_local_dir_with_config_and_weights(tmp_path):
    import json

    from .conftest import TINY_CONFIG

    folder = tmp_path / "tiny-dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    save_tiny_weights(folder / "open_clip_model.safetensors", seed=5)
    backbone = load_backbone(f"local-dir:{folder}", device="cpu")
    assert backbone.info.weights_id.startswith(f"local-dir:{folder}@")
    assert not backbone.info.random_weights
    expected = load_file(str(folder / "open_clip_model.safetensors"))["visual.conv1.weight"]
    assert torch.equal(backbone.model.visual.conv1.weight, expected)
    with pytest.raises(WeightsUnavailableError, match=r"open_clip_config\.json"):
        load_backbone(f"local-dir:{tmp_path / 'missing'}", device="cpu")


def test_checkpoint_that_is_not_a_state_dict_or_is_a_folder(tmp_path):
    odd = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], odd)
    with pytest.raises(WeightsUnavailableError, match="could not load weights"):
        load_backbone(TINY_MODEL, pretrained=str(odd), device="cpu")
    with pytest.raises(WeightsUnavailableError, match="is a folder"):
        load_backbone(TINY_MODEL, pretrained=str(tmp_path), device="cpu")
