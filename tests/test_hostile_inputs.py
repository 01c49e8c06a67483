"""Hostile inputs: each gets a specific message (what was wrong, what is allowed), nothing else
changes, and the engine and the server keep serving.

The corpus is generated here (nothing is downloaded): broken and unusual files, labels,
numbers and checkpoints, run through the engine (`open_image`, `Backbone.prepare`,
`Playground.run`, `load_backbone`) and through the app's `/playground` API.

Covered elsewhere and not repeated here: EXIF rotation and alpha on white in `prepare`, unknown
architecture, missing checkpoint, corrupted safetensors and pickled code (test_loading.py);
label limits and duplicates in `parse_labels` (test_classifier.py); AttackConfig's ranges,
NaN/inf included (test_attacks.py); unknown threat/defence, a true or target label not in the
list and a negative seed in `Playground.run` (test_pipeline.py); eps -2, steps 100000, an
unknown method/threat and a broken PNG through the API (test_app.py).
"""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageFile

from app.service import MAX_SEED, PlaygroundRequest
from clipure_core import (
    AttackConfig,
    InputError,
    Playground,
    WeightsUnavailableError,
    load_backbone,
)
from clipure_core.attacks import MAX_STEPS
from clipure_core.images import MAX_ASPECT_RATIO, MAX_FILE_BYTES, open_image
from clipure_core.pixels import pil_to_pixels
from clipure_core.prompts import MAX_LABEL_CHARS, MAX_LABELS

from .conftest import ONE_STEP_API_ARGS, TINY_MODEL, save_tiny_weights

ONE_STEP = AttackConfig(steps=1)
API_ARGS = ONE_STEP_API_ARGS
RED, WHITE = (255, 0, 0), (255, 255, 255)
# What gradio says when its gr.Image input cannot even open a file (see _api_message).
GRADIO_PREPROCESS = "Could not preprocess input component at index 0"


# --- the corpus ------------------------------------------------------------------------------


def _png(width: int, height: int, depth: int, colour: int, raw: bytes, extra=()) -> bytes:
    """A PNG written chunk by chunk: for what Pillow cannot write (16-bit RGB, a header that
    declares a huge picture over a few bytes of data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunks = [chunk(b"IHDR", header), *(chunk(k, d) for k, d in extra)]
    chunks += [chunk(b"IDAT", zlib.compress(raw)), chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noise(size: int = 48) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _palette(transparent: bool) -> bytes:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 255, *RED] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 8, 16))  # left half: palette entry 0 (blue, or transparent)
    image.paste(1, (8, 0, 16, 16))
    return _saved(image, "PNG", **({"transparency": 0} if transparent else {}))


def _animated() -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 0, 255))]
    return _saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def _exif_rotated() -> bytes:
    """Stored 64 wide x 32 tall, white on the left; displayed upright it is white on top."""
    portrait = Image.new("RGB", (64, 32), (0, 0, 0))
    portrait.paste(WHITE, (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _saved(portrait, "JPEG", exif=exif, quality=95)


def _grey16(level: int, transparent: int | None = None) -> bytes:
    raw = b"".join(b"\0" + struct.pack(">H", level) * 8 for _ in range(8))
    extra = [(b"tRNS", struct.pack(">H", transparent))] if transparent is not None else []
    return _png(8, 8, 16, 0, raw, extra)


CORPUS = {
    "truncated.png": lambda: _saved(_noise(), "PNG")[:1500],
    "truncated.jpg": lambda: _saved(_noise(), "JPEG", quality=95)[:3000],  # scan data cut
    "header-cut.jpg": lambda: _saved(_noise(), "JPEG", quality=95)[:300],  # tables cut
    "text.png": lambda: b"This is a text file, whatever its name says.\n",
    "empty.png": lambda: b"",
    "vector.svg": lambda: (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" '
        b'height="8"><rect width="8" height="8" fill="red"/></svg>\n'
    ),
    "document.pdf": lambda: b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "bomb.png": lambda: _png(100_000, 100_000, 8, 0, b"\0" * 1000),  # 10^10 pixels in 100 bytes
    "big.png": lambda: _png(8000, 8000, 8, 0, b"\0" * 1000),  # 64 megapixels: over our limit
    "strip.png": lambda: _saved(Image.new("RGB", (2, 10_000), RED), "PNG"),
    "animated.gif": _animated,
    "grey16.png": lambda: _grey16(30_000),  # 30000 * 255 / 65535 = 116.7 -> 117
    "grey16-trns.png": lambda: _grey16(30_000, transparent=30_000),
    "rgb16.png": lambda: _png(4, 4, 16, 2, (b"\0" + b"\xff\xff\x80\x00\x00\x00" * 4) * 4),
    "cmyk.jpg": lambda: _saved(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
    "palette.png": lambda: _palette(transparent=False),
    "palette-transparent.png": lambda: _palette(transparent=True),
    "la.png": lambda: _saved(Image.new("LA", (16, 16), (0, 0)), "PNG"),
    "rgba.png": lambda: _saved(Image.new("RGBA", (16, 16), (255, 0, 0, 128)), "PNG"),
    "1x1.png": lambda: _saved(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
    "exif-rotated.jpg": _exif_rotated,
    "normal.png": lambda: _saved(_noise(24), "PNG"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, make in CORPUS.items():
        paths[name] = folder / name
        paths[name].write_bytes(make())
    oversize = folder / "oversize.png"
    with oversize.open("wb") as file:  # sparse: costs no disk
        file.truncate(MAX_FILE_BYTES + 1)
    paths["oversize.png"] = oversize
    return paths


# (file, message) for every file that is refused
REFUSED = [
    ("truncated.png", r"^the image file is truncated or damaged .*send a complete PNG, JPEG"),
    ("truncated.jpg", r"^the image file is truncated or damaged .*send a complete PNG, JPEG"),
    ("header-cut.jpg", r"^the image file is truncated or damaged .*send a complete PNG, JPEG"),
    (
        "text.png",
        r"^the file is not a readable image: it is not a PNG, JPEG, WebP, GIF, BMP or TIFF",
    ),
    ("empty.png", r"^the image file is empty \(0 bytes\); upload a PNG, JPEG"),
    ("vector.svg", r"^the file is an SVG \(vector\) image, which is not accepted; export it as"),
    ("document.pdf", r"^the file is a PDF document, which is not accepted; export it as a PNG"),
    ("bomb.png", r"^the image declares far more than 40 megapixels .*it was not decoded"),
    ("big.png", r"^the image is 8000 x 8000 pixels; at most 40 megapixels\.$"),
    ("strip.png", r"^the image is 2 x 10000 pixels: one side is 5000 times the other, at most 20"),
    ("oversize.png", r"^the image file is 20,971,521 bytes; at most 20,971,520 bytes \(20 MB\)\.$"),
]
# (file, the colour every model-input pixel should have, tolerance in levels)
ACCEPTED = [
    ("animated.gif", RED, 0),  # the first frame, on purpose
    ("grey16.png", (117, 117, 117), 0),  # scaled, not clipped to 255
    ("grey16-trns.png", WHITE, 0),  # its tRNS grey level is transparent: white
    ("rgb16.png", (255, 128, 0), 0),  # Pillow reads 16-bit RGB as 8-bit itself
    ("cmyk.jpg", RED, 3),
    ("la.png", WHITE, 0),  # fully transparent black on white
    ("rgba.png", (255, 127, 127), 1),  # half-transparent red on white
    ("1x1.png", (10, 200, 30), 0),
]


# --- engine: files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playground(backbone):
    return Playground(backbone, "single")


@pytest.mark.parametrize("name,message", REFUSED)
def test_unusable_files_get_a_specific_message(corpus, name, message):
    with pytest.raises(InputError, match=message) as raised:
        open_image(corpus[name])
    assert str(corpus[name].parent) not in str(raised.value)  # no server paths


def test_images_opened_by_the_caller_are_checked_too(corpus):
    """Python callers may pass Image.open(...) (lazy): decoding errors and limits still give
    the same messages."""
    with pytest.raises(InputError, match=r"^the image file is truncated or damaged"):
        open_image(Image.open(corpus["truncated.png"]))
    with pytest.raises(InputError, match=r"^the image is 8000 x 8000 pixels; at most 40"):
        open_image(Image.open(corpus["big.png"]))


def test_the_bomb_guard_fires_before_any_pixel_is_decoded(corpus, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for name in ("bomb.png", "big.png", "strip.png"):
        with pytest.raises(InputError):
            open_image(corpus[name])


@pytest.mark.parametrize("name,colour,tolerance", ACCEPTED)
def test_unusual_images_become_the_right_rgb_and_run(corpus, playground, name, colour, tolerance):
    pixels = playground.backbone.prepare(open_image(corpus[name]))
    expected = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255
    assert (pixels - expected).abs().max() <= (tolerance + 0.01) / 255
    result = playground.run(open_image(corpus[name]), "cat, dog", ONE_STEP, seed=0)
    assert torch.equal(pil_to_pixels(result.clean_image), pixels)


def test_palette_images_with_and_without_transparency(corpus, backbone):
    opaque = backbone.prepare(open_image(corpus["palette.png"]))
    transparent = backbone.prepare(open_image(corpus["palette-transparent.png"]))
    red = torch.tensor([1.0, 0, 0]).view(3, 1)
    assert torch.equal(opaque[:, :, -4:].flatten(1).unique(dim=1), red)
    assert torch.equal(transparent[:, :, -4:].flatten(1).unique(dim=1), red)
    assert torch.equal(opaque[:, :, :4].flatten(1).unique(dim=1), torch.tensor([[0.0], [0], [1]]))
    assert torch.equal(transparent[:, :, :4], torch.ones(3, 32, 4))  # transparent -> white


def test_sixteen_bit_grey_is_scaled_with_rounding_not_clipped(backbone):
    levels = np.arange(0, 65536, 257, dtype=np.uint16)  # exactly 0, 1, ..., 255 in 8 bits
    image = Image.fromarray(np.tile(levels, (256, 1)))
    assert image.mode == "I;16"
    assert np.asarray(image.convert("RGB"))[0, 1:, 0].min() == 255  # Pillow saturates
    from clipure_core.images import normalize_image

    for mode_image in (image, image.convert("I")):  # 16-bit and 32-bit integer modes
        rgb = np.asarray(normalize_image(mode_image))
        assert rgb.shape == (256, 256, 3) and np.array_equal(rgb[0, :, 1], np.arange(256))
    halfway = Image.fromarray(np.array([[128, 129, 65535 - 128]], dtype=np.uint16))
    assert np.asarray(normalize_image(halfway))[0, :, 0].tolist() == [0, 1, 255]


def test_exif_rotation_survives_open_image(corpus, backbone):
    """test_loading.py checks `prepare`; here the file goes through `open_image` first."""
    rotated = backbone.prepare(open_image(corpus["exif-rotated.jpg"]))
    assert rotated[:, :8].mean() > 0.9 and rotated[:, -8:].mean() < 0.1


def test_aspect_ratio_limit_holds_for_images_given_directly(playground):
    with pytest.raises(InputError, match=r"one side is 5000 times the other, at most 20"):
        playground.run(Image.new("RGB", (10_000, 2)), "cat, dog", ONE_STEP)
    edge = Image.new("RGB", (2 * MAX_ASPECT_RATIO, 2), RED)  # exactly at the limit: accepted
    assert playground.backbone.prepare(edge).shape == (3, 32, 32)
    assert playground.run(edge, "cat, dog", ONE_STEP).labels == ["cat", "dog"]


# --- engine: labels, numbers, models ---------------------------------------------------------

UNICODE_LABELS = ["猫", "собака", "🚗 voiture", "قطة", "飛行機 ✈️"]


@pytest.mark.parametrize(
    "labels,message",
    [
        ("", r"^labels: give at least one class name \(comma-separated\), or a preset name"),
        (" ,, ,  , ", r"^labels: give at least one class name"),
        (None, r"^labels: give at least one class name"),
        (5, r"^labels must be comma-separated text or a list of names, got 5\.$"),
        (
            ", ".join(f"class {i}" for i in range(MAX_LABELS + 1)),
            r"^labels: 1001 given, at most 1000 are allowed\.$",
        ),
        ("cat, " + "x" * 201, r"^labels: each label may have at most 200 characters; 'xxx"),
        ("cat", r"^pgd needs at least 2 class labels; 1 given\. Give 2 or more labels\.$"),
    ],
)
def test_bad_labels_get_a_specific_message(playground, cat_photo, labels, message):
    with pytest.raises(InputError, match=message):
        playground.run(cat_photo, labels, ONE_STEP)
    assert playground.run(cat_photo, "cat, dog", ONE_STEP).labels == ["cat", "dog"]


def test_a_single_label_parses_and_classifies(backbone, cat_photo):
    """One label is a valid label list (probability 1), but no attack can change a 1-class
    prediction: Playground.run refuses it (above) with the number of labels it needs."""
    from clipure_core import ZeroShotClassifier

    classifier = ZeroShotClassifier(backbone, "cat", "single")
    probabilities = classifier(backbone.prepare(cat_photo).unsqueeze(0)).softmax(-1)
    assert classifier.labels == ["cat"] and probabilities.tolist() == [[1.0]]


def test_non_latin_labels_and_emoji_round_trip(playground, cat_photo):
    result = playground.run(cat_photo, ", ".join(UNICODE_LABELS), ONE_STEP)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["labels"] == UNICODE_LABELS and data["settings"]["labels"] == UNICODE_LABELS


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"eps": 0}, r"^eps must be in \[1, 255\] for L-inf \(in units of 1/255"),
        ({"eps": 0.5}, r"^eps must be in \[1, 255\] for L-inf"),
        ({"eps": 256}, r"^eps must be in \[1, 255\] for L-inf .*got 256\.$"),
        ({"eps": -1}, r"^eps must be in \[1, 255\]"),
        ({"eps": math.nan}, r"^eps must be a finite number, got nan\.$"),
        ({"eps": -math.inf}, r"^eps must be a finite number, got -inf\.$"),
        ({"eps": "four"}, r"^eps must be a number, got 'four'\.$"),
        ({"norm": "l2", "method": "apgd-ce", "eps": 65}, r"^eps must be in \(0, 64\] for L2"),
        ({"norm": "l2", "method": "apgd-ce", "eps": 0}, r"^eps must be in \(0, 64\] for L2"),
        ({"step_size": -1}, r"^step size must be in \(0, 255\] for L-inf"),
        ({"step_size": math.inf}, r"^step size must be a finite number"),
        ({"steps": 0}, r"^steps must be an integer from 1 to 1000, got 0\.$"),
        ({"steps": -5}, r"^steps must be an integer from 1 to 1000, got -5\.$"),
        ({"steps": 1e300}, r"^steps must be an integer from 1 to 1000, got 1e\+300\.$"),
        ({"steps": math.nan}, r"^steps must be a finite number, got nan\.$"),
        ({"steps": 2.5}, r"^steps must be a whole number, got 2\.5\.$"),
        ({"eot_samples": 65}, r"^EOT samples must be an integer from 1 to 64"),
        ({"method": None}, r"^attack method '': use one of pgd, pgd-l2, fgsm"),
        ({"method": "deepfool"}, r"^attack method 'deepfool': use one of pgd"),
        ({"norm": "l3"}, r"^norm 'l3': use linf or l2\.$"),
        ({"method": "pgd", "norm": "l2", "eps": 1}, r"^pgd supports norm linf, not 'l2'\.$"),
    ],
)
def test_bad_numbers_in_ui_units_get_a_specific_message(fields, message):
    with pytest.raises(InputError, match=message):
        PlaygroundRequest(**{"labels": "cat, dog", **fields}).attack_config()


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"seed": -1}, r"^seed must be an integer from 0 to 4294967295, got -1\.$"),
        ({"seed": 2**70}, r"^seed must be an integer from 0 to 4294967295"),
        ({"seed": math.nan}, r"^seed must be a finite number"),
        ({"threat": "oracle"}, r"^threat model 'oracle': use one of transfer, release, paper"),
        ({"threat": 3}, r"^threat model must be text, got 3\.$"),
        ({"labels": {"cat": 1}}, r"^labels must be text"),
        ({"defenses": ["clipure_cos", 7]}, r"^defence must be text, got 7\.$"),
        ({"defenses": ["jpeg"]}, r"^unknown defence 'jpeg': use one of clipure_cos"),
        ({"target_label": "zebra"}, r"^label 'zebra' is not in the label list \(cat, dog"),
        (
            {"defense_settings": {"clipure_cos": {"steps": math.inf}}},
            r"^CLIPure-Cos steps must be a finite number",
        ),
        (
            {"defense_settings": {"clipure_cos": {"step_size": -1}}},
            r"^CLIPure-Cos step size: a finite number > 0\.$",
        ),
    ],
)
def test_bad_requests_in_the_service_get_a_specific_message(tiny_checkpoint, fields, message):
    from app.catalog import model_choices
    from app.service import PlaygroundService

    service = PlaygroundService(device="cpu")
    choice = model_choices(TINY_MODEL, str(tiny_checkpoint))[0]
    photo = Image.new("RGB", (16, 16), RED)
    request = {"labels": "cat, dog", "steps": 1, "defenses": ["clipure_cos"], **fields}
    with pytest.raises(InputError, match=message):
        service.run(choice, photo, PlaygroundRequest(**request))
    assert service.run(choice, photo, PlaygroundRequest("cat, dog", steps=1)).labels[0] == "cat"
    assert MAX_SEED == 2**32 - 1 and MAX_STEPS == 1000


@pytest.fixture(scope="module")
def broken_checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    whole = folder / "whole.pt"
    save_tiny_weights(whole)
    (folder / "truncated.pt").write_bytes(whole.read_bytes()[:4000])
    (folder / "empty.safetensors").write_bytes(b"")
    other = {"visual.conv1.weight": torch.zeros(1, 3, 8, 8), "logit_scale": torch.ones(())}
    torch.save(other, folder / "other-architecture.pt")
    (folder / "folder.pt").mkdir()
    return {path.name: path for path in folder.iterdir()}


@pytest.mark.parametrize(
    "name,message",
    [
        ("truncated.pt", r"^could not load weights into clipure-test-tiny: .*corrupted"),
        ("empty.safetensors", r"^could not load weights into clipure-test-tiny: .*header"),
        ("other-architecture.pt", r"(?s)^could not load weights into clipure-test-tiny: .*Miss"),
        ("folder.pt", r"is a folder; give the checkpoint file inside it"),
    ],
)
def test_broken_checkpoints_are_clear_errors(broken_checkpoints, name, message):
    with pytest.raises(WeightsUnavailableError, match=message):
        load_backbone(TINY_MODEL, pretrained=str(broken_checkpoints[name]), device="cpu")


# --- the app's /playground API ---------------------------------------------------------------


@pytest.fixture(scope="module")
def client(running_app) -> Client:
    return Client(running_app, verbose=False)


@pytest.fixture(scope="module")
def api_decodes_uploads(client) -> bool:
    """Whether the API's image input is a gr.Image: gradio then opens every upload with
    Pillow before the app sees it, and a file Pillow cannot identify gets gradio's generic
    'Could not preprocess' error instead of ours (a gr.File input hands every file to us)."""
    api = client.view_api(print_info=False, return_format="dict")
    return api["named_endpoints"]["/playground"]["parameters"][0]["component"] == "Image"


def _api_message(message: str, gradio_opens_it: bool, api_decodes_uploads: bool) -> str:
    return GRADIO_PREPROCESS if gradio_opens_it and api_decodes_uploads else message


def _assert_serving(client: Client, corpus: dict[str, Path]) -> None:
    data = client.predict(
        image=handle_file(str(corpus["normal.png"])), **API_ARGS, api_name="/playground"
    )
    assert data["labels"] == ["cat", "dog"]


# Files Pillow cannot open at all: gradio's gr.Image input fails on them first.
GRADIO_OPENS = {"text.png", "empty.png", "document.pdf", "header-cut.jpg", "bomb.png"}


@pytest.mark.parametrize("name,message", [case for case in REFUSED if case[0] != "oversize.png"])
def test_api_refuses_unusable_files_and_keeps_serving(
    client, corpus, api_decodes_uploads, name, message
):
    expected = _api_message(message.lstrip("^"), name in GRADIO_OPENS, api_decodes_uploads)
    with pytest.raises(AppError, match=expected) as raised:
        client.predict(image=handle_file(str(corpus[name])), **API_ARGS, api_name="/playground")
    assert "Traceback" not in str(raised.value)
    _assert_serving(client, corpus)


@pytest.mark.parametrize("name", [case[0] for case in ACCEPTED] + ["palette-transparent.png"])
def test_api_accepts_unusual_images(client, corpus, name):
    data = client.predict(image=handle_file(str(corpus[name])), **API_ARGS, api_name="/playground")
    assert data["labels"] == ["cat", "dog"]


def test_api_refuses_oversize_uploads_before_they_are_sent(client, corpus, running_app):
    """gradio's max_file_size ("20mb" = 20 MiB, the same limit as MAX_FILE_BYTES): the
    client refuses to upload, and the server refuses the upload itself (HTTP 413)."""
    with pytest.raises(ValueError, match=r"exceeds the maximum file size of 20971520 bytes"):
        client.predict(
            image=handle_file(str(corpus["oversize.png"])), **API_ARGS, api_name="/playground"
        )
    with corpus["oversize.png"].open("rb") as file:
        response = httpx.post(
            running_app.rstrip("/") + "/gradio_api/upload",
            files={"files": ("oversize.png", file, "image/png")},
            timeout=60,
        )
    assert response.status_code == 413 and "20971520 bytes" in response.text
    _assert_serving(client, corpus)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"labels": ""}, r"labels: give at least one class name"),
        ({"labels": " ,  , ,"}, r"labels: give at least one class name"),
        ({"labels": ", ".join(f"c{i}" for i in range(1001))}, r"labels: 1001 given, at most"),
        ({"labels": "cat, " + "y" * (MAX_LABEL_CHARS + 1)}, r"at most 200 characters"),
        ({"labels": "cat"}, r"pgd needs at least 2 class labels; 1 given\."),
        ({"eps": 0}, r"eps must be in \[1, 255\] for L-inf \(in units of 1/255: 4 means 4/255\)"),
        ({"eps": 300}, r"eps must be in \[1, 255\] for L-inf .*got 300"),
        ({"steps": 0}, r"steps must be an integer from 1 to 1000, got 0\."),
        ({"steps": -3}, r"steps must be an integer from 1 to 1000, got -3\."),
        ({"steps": 10**9}, r"steps must be an integer from 1 to 1000, got 1000000000\."),
        ({"seed": 2**40}, r"seed must be an integer from 0 to 4294967295"),
        ({"method": ""}, r"attack method '': use one of pgd"),
        ({"norm": "l3"}, r"norm 'l3': use linf or l2\."),
        ({"threat": "magic"}, r"threat model 'magic': use one of transfer"),
        ({"defenses": "clipure_cos, jpeg"}, r"unknown defence 'jpeg': use one of clipure_cos"),
    ],
)
def test_api_refuses_bad_fields_and_keeps_serving(client, corpus, fields, message):
    with pytest.raises(AppError, match=message) as raised:
        client.predict(
            image=handle_file(str(corpus["normal.png"])),
            **{**API_ARGS, **fields},
            api_name="/playground",
        )
    assert "Traceback" not in str(raised.value)
    _assert_serving(client, corpus)


def test_api_returns_unicode_labels_intact_and_announces_duplicates(client, corpus):
    labels = ", ".join([*UNICODE_LABELS, "猫"])
    data = client.predict(
        image=handle_file(str(corpus["normal.png"])),
        **{**API_ARGS, "labels": labels},
        api_name="/playground",
    )
    assert data["labels"] == UNICODE_LABELS
    assert data["notices"] == ["1 duplicate label(s) removed."]
    assert set(data["predictions"]["clean"].values()) <= set(UNICODE_LABELS)


def test_nan_and_inf_through_the_api(client, corpus, running_app):
    """gradio_client cannot send NaN/inf (JSON has no such numbers): it refuses before
    sending. A raw HTTP client can (Python's JSON writes NaN): eps gets the app's message;
    steps gets it too unless its gr.Number rounds (precision=0), which fails first in gradio."""
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        client.predict(
            image=handle_file(str(corpus["normal.png"])),
            **{**API_ARGS, "eps": math.nan},
            api_name="/playground",
        )
    base = running_app.rstrip("/") + "/gradio_api"
    with corpus["normal.png"].open("rb") as file:
        uploaded = httpx.post(base + "/upload", files={"files": ("normal.png", file)}).json()[0]
    image = {"path": uploaded, "orig_name": "normal.png", "meta": {"_type": "gradio.FileData"}}

    def raw_call(**fields) -> str:
        values = [image, *{**API_ARGS, **fields}.values()]
        body = json.dumps({"data": values})  # NaN and Infinity as Python writes them
        headers = {"content-type": "application/json"}
        event = httpx.post(base + "/call/playground", content=body, headers=headers).json()
        return httpx.get(f"{base}/call/playground/{event['event_id']}", timeout=60).text

    assert "eps must be a finite number, got nan." in raw_call(eps=math.nan)
    assert "eps must be a finite number, got inf." in raw_call(eps=math.inf)
    components = httpx.get(running_app.rstrip("/") + "/config").json()["components"]
    (steps,) = [c for c in components if c.get("props", {}).get("label") == "steps"]
    expected = (
        "preprocess input component at index 5"
        if steps["props"].get("precision") == 0
        else ("steps must be a finite number, got nan.")
    )
    answer = raw_call(steps=math.nan)
    assert "event: error" in answer and expected in answer and "Traceback" not in answer
    assert "event: complete" in raw_call()
    _assert_serving(client, corpus)
