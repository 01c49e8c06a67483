"""Shared fixtures: a tiny randomly initialised open_clip model, saved and loaded for real."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipure_core import load_backbone

TINY_MODEL = "clipure-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
LABELS = ["cat", "dog", "car", "airplane", "coffee mug"]
ASSETS = __import__("pathlib").Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory):
    """Register the tiny architecture and keep every cache of the run in a temp folder."""
    config_dir = tmp_path_factory.mktemp("model_configs")
    (config_dir / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_dir)
    patch = pytest.MonkeyPatch()
    patch.setenv("CLIPURE_CACHE_DIR", str(tmp_path_factory.mktemp("clipure_cache")))
    yield
    patch.undo()


def save_tiny_weights(path, seed: int = 1234, quick_gelu: bool = False) -> None:
    """Build the tiny model with seeded random weights and save its state dict."""
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_MODEL, force_quick_gelu=quick_gelu)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_tiny_weights(path)
    return path


@pytest.fixture(scope="session")
def backbone(tiny_checkpoint):
    return load_backbone(TINY_MODEL, pretrained=str(tiny_checkpoint), device="cpu")


# Batch evaluation (tests/test_evaluate_*.py): a tiny model folder and a synthetic ImageFolder.
CLASSES = ["cat", "dog", "sports_car", "bird"]  # folder names; 'sports car' to the model
IMAGES_PER_CLASS = 3


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny model as a `local-dir:` folder, loadable by subprocesses too."""
    folder = tmp_path_factory.mktemp("tiny-model")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    save_tiny_weights(folder / "open_clip_model.safetensors", seed=7)
    return folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """4 classes x 3 random images of mixed sizes."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(IMAGES_PER_CLASS):
            size = (int(rng.integers(24, 48)), int(rng.integers(24, 48)), 3)
            image = rng.integers(0, 256, size, dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def cat_photo():
    return Image.open(ASSETS / "chelsea.png")


@pytest.fixture(scope="session")
def running_app(tiny_checkpoint):
    """The playground app served in-process on a free port, with the tiny model."""
    from app.config import parse_config
    from app.ui import build_demo, launch_options

    config = parse_config(
        [
            *("--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--device", "cpu"),
            "--any-backbone",  # the columns tests name local-dir: backbones
        ],
        environ={},
    )
    demo = build_demo(config)
    options = {**launch_options(config), "server_port": None}
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **options)
    yield url
    demo.close()


def run_without_weights(args: list[str], home) -> subprocess.CompletedProcess:
    """Run `python ARGS` from the repo root as on a machine with no internet and empty caches."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(home),
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ASSETS.parent,
    )


def fill_hf_cache(cache_dir, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)


@pytest.fixture
def no_network(monkeypatch):
    """Every TCP connection fails, as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# A real browser: Debian's Chromium driven by Playwright (never a downloaded browser build).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1600, "height": 1200}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


# One cheap /playground request on the tiny model.
ONE_STEP_API_ARGS = {
    "labels": "cat, dog",
    "method": "pgd",
    "norm": "linf",
    "eps": 4,
    "steps": 1,
    "threat": "transfer",
    "defenses": "clipure_cos",
    "seed": 0,
}


# --- CUDA tests ------------------------------------------------------------------------------
# Tests marked `cuda` run, never skip, where CUDA is present. On CPU the CI command deselects
# them (-m "not cuda"); a run without any -m deselects them too when CUDA is absent, and says so.


def pytest_collection_modifyitems(config, items):
    if config.option.markexpr or torch.cuda.is_available():
        return
    cuda = [item for item in items if item.get_closest_marker("cuda")]
    if cuda:
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]
        config.hook.pytest_deselected(items=cuda)
        config._clipure_cuda_deselected = len(cuda)


def pytest_terminal_summary(terminalreporter, config):
    count = getattr(config, "_clipure_cuda_deselected", 0)
    if count:
        terminalreporter.write_line(
            f"{count} CUDA tests deselected: no CUDA here (bash bench/gpu_check.sh runs them)."
        )
