"""What the app exposes: where it listens, which files it reads and serves, what it keeps on
disk after a request, and what its log holds.

Covered elsewhere: uploads over 20 MB, and files that are not PNG, JPEG, WebP, GIF, BMP or
TIFF images, are refused with a specific message (tests/test_hostile_inputs.py:
test_api_refuses_oversize_uploads_before_they_are_sent, test_api_refuses_unusable_files_and_
keeps_serving); checkpoints and priors load as plain tensors only, pickled code is refused and
never runs (tests/test_loading.py: test_pickled_code_is_refused_and_never_runs; tests/
test_prior.py: test_pickled_code_in_a_prior_is_refused).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from gradio.utils import get_upload_folder
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app.ui
import clipure_core.pipeline as pipeline
from app.config import parse_config
from app.service import PlaygroundService
from app.ui import build_demo, launch_options
from clipure_core.images import MAX_FILE_BYTES

from .conftest import ASSETS, ONE_STEP_API_ARGS, TINY_CONFIG, TINY_MODEL
from .page import page_inputs

ROOT = ASSETS.parent
API_ARGS = ONE_STEP_API_ARGS


def run_inputs(url: str, model_label: str, image, labels: str, true_label: str = "") -> list:
    """The inputs of the page's undocumented /run endpoint (the Run button), one attack step."""
    return page_inputs(
        url,
        Backbone=model_label,
        Photo=image,
        **{"Labels (comma-separated)": labels, "True label": true_label, "Attack steps": 1},
        **{"CLIPure-Cos steps": 2},
    )


def call(url: str, api_name: str, data: list) -> str:
    """A raw REST call (POST /call/NAME, then read its event stream): no client-side checks."""
    posted = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data})
    assert posted.status_code == 200
    event_id = posted.json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=60).text


# --- where it listens ------------------------------------------------------------------------


def test_the_app_listens_on_localhost_only_unless_told(running_app, monkeypatch):
    options = launch_options(parse_config([], environ={}))
    assert (options["server_name"], options["share"]) == ("127.0.0.1", False)
    assert running_app.startswith("http://127.0.0.1:")

    spec = importlib.util.spec_from_file_location("app_entry_point", ROOT / "app.py")
    entry_point = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry_point)
    launched = {}

    class Demo:
        def launch(self, **options):
            launched.update(options)

    monkeypatch.setattr(entry_point, "load_backbone", lambda *args, **kwargs: None)
    monkeypatch.setattr(app.ui, "build_demo", lambda config: Demo())
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("CLIPURE_HOST", raising=False)
    monkeypatch.delenv("CLIPURE_SHARE", raising=False)
    assert entry_point.main(["--pretrained", "random"]) == 0
    assert (launched["server_name"], launched["share"]) == ("127.0.0.1", False)


# --- which files it reads and serves ---------------------------------------------------------


def outside_paths(url: str, tmp_path: Path) -> list[str]:
    """Files of the server that no request may read: system, repository, temp, traversal."""
    photo = tmp_path / "photo.png"
    shutil.copyfile(ASSETS / "chelsea.png", photo)  # a real image, in the system temp dir
    return [
        "/etc/passwd",
        str(ASSETS / "chelsea.png"),  # the app's own folder (the working directory)
        str(photo),
        f"{get_upload_folder()}/../../etc/passwd",
        "file:///etc/passwd",
        f"{url}config",  # the server itself, by URL
        "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
    ]


def test_no_endpoint_takes_a_file_of_the_server(running_app, tmp_path):
    for path in outside_paths(running_app, tmp_path):
        image = {"path": path, "meta": {"_type": "gradio.FileData"}}
        answer = call(running_app, "playground", [image, *API_ARGS.values()])
        assert answer.startswith("event: error"), path
        reason = json.loads(answer.partition("data:")[2])["error"]
        assert "not uploaded by a user" in reason or "failed validation" in reason, path
        assert "root:" not in answer  # nothing of /etc/passwd came back


def test_no_file_outside_gradios_cache_is_served(running_app, tiny_checkpoint, tmp_path):
    for path in [*outside_paths(running_app, tmp_path)[:3], str(ROOT / "app" / "config.py")]:
        response = httpx.get(f"{running_app}gradio_api/file={path}")
        assert response.status_code == 403, path
    response = httpx.get(f"{running_app}gradio_api/file={tiny_checkpoint}")
    assert response.status_code == 403
    assert "allowed_paths" not in launch_options(parse_config([], environ={}))


def test_uploads_are_limited_to_20_mb(running_app):
    assert launch_options(parse_config([], environ={}))["max_file_size"] == MAX_FILE_BYTES
    assert httpx.get(f"{running_app}config").json()["max_file_size"] == MAX_FILE_BYTES


# --- what it keeps on disk -------------------------------------------------------------------


def test_downloads_go_to_gradios_cache_which_is_emptied_at_shutdown(tiny_checkpoint):
    service = PlaygroundService("cpu")
    config = parse_config(
        # lazy: no example results made at start-up, only this request's files
        [
            "--model",
            TINY_MODEL,
            "--pretrained",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--examples",
            "lazy",
        ],
        environ={},
    )
    demo = build_demo(config, service)
    assert demo.delete_cache == (3600, 3600)  # gradio's cache: files live about an hour
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_port=None)
    try:
        label = f"{TINY_MODEL} · {tiny_checkpoint}"
        image = handle_file(str(ASSETS / "chelsea.png"))
        outputs = Client(url, verbose=False).predict(
            *run_inputs(url, label, image, "cat, dog"), api_name="/run"
        )
        assert json.loads(Path(outputs[-1]).read_text())["labels"] == ["cat", "dog"]
        assert list(service.output_dir.iterdir()) == []  # our copies are gone
        served = [
            Path(name)
            for files in demo.temp_file_sets
            for name in files
            if Path(name).name.startswith("clipure-")
        ]
        assert sorted(path.suffix for path in served) == [".json", ".png"]
        assert all(path.is_file() and Path(get_upload_folder()) in path.parents for path in served)
    finally:
        demo.close()
    assert not any(path.exists() for path in served)


def test_the_download_folder_is_removed_when_the_process_exits(tmp_path):
    (tmp_path / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    script = f"""
import open_clip
open_clip.add_model_config({str(tmp_path)!r})
from app.config import parse_config
from app.service import PlaygroundService
from app.ui import build_demo
service = PlaygroundService("cpu")
(service.output_dir / "clipure-left-behind.png").write_bytes(b"not yet handed over")
config = parse_config(["--model", {TINY_MODEL!r}, "--pretrained", "random"], environ={{}})
build_demo(config, service)
print(service.output_dir)
"""
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": tempfile.gettempdir()},
    )
    assert completed.returncode == 0, completed.stderr
    folder = Path(completed.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("clipure-playground-") and not folder.exists()


# --- what it logs ----------------------------------------------------------------------------


def test_the_log_holds_counts_and_timings_but_no_user_data(
    running_app, tiny_checkpoint, monkeypatch, caplog, capfd, tmp_path
):
    caplog.set_level(logging.INFO)
    secrets = ("zebra-secret", "okapi-secret", "holiday-secret")
    photo = tmp_path / "holiday-secret.png"
    shutil.copyfile(ASSETS / "chelsea.png", photo)
    client = Client(running_app, verbose=False)
    args = {**API_ARGS, "labels": "zebra-secret, okapi-secret"}

    client.predict(image=handle_file(str(photo)), **args, api_name="/playground")
    with pytest.raises(AppError, match="okapi-secret-9"):  # the user's own words, to the user
        client.predict(
            *run_inputs(
                running_app,
                f"{TINY_MODEL} · {tiny_checkpoint}",
                handle_file(str(photo)),
                args["labels"],
                true_label="okapi-secret-9",
            ),
            api_name="/run",
        )

    def broken(model, *args, **kwargs):  # an error whose message quotes the user's labels
        raise RuntimeError(f"the attack broke on {', '.join(model.labels)}")

    monkeypatch.setattr(pipeline, "craft_attack", broken)
    with pytest.raises(AppError, match="Something went wrong on the server") as raised:
        client.predict(image=handle_file(str(photo)), **args, api_name="/playground")
    assert "zebra-secret" not in str(raised.value)

    logged = caplog.text
    server_output = capfd.readouterr()
    for secret in secrets:
        assert secret not in logged
        assert secret not in server_output.out + server_output.err
    assert "request done: 2 labels, pgd x 1 steps, 1 defences" in logged
    assert "run: refused (InputError) after" in logged
    assert "playground: failed (RuntimeError; its message is not logged) after" in logged
    assert "in broken" in logged  # where it failed, for whoever reads the log
