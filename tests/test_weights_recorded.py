"""Settings say what ran: the weights a run loaded are recorded by what they are (a file or a
`local-dir:` folder by path and the sha256 of its files), never as the default tag."""

from __future__ import annotations

import html
import json

from clipure_core import Playground, load_backbone
from clipure_core.audit import run_audit
from clipure_core.evaluate.cli import main as evaluate_main
from clipure_core.loading import content_sha256

from .conftest import TINY_MODEL


def test_content_sha256_hashes_names_and_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "b.bin").write_bytes(bytes([0, 1, 2]))
    # sha256(b"a.txt\0abc")[:16] and sha256(b"a.txt\0abc" b"b.bin\0\x00\x01\x02")[:16],
    # worked out with hashlib outside the code
    assert content_sha256([tmp_path / "a.txt"]) == "a79df2cab4c7a35b"
    both = [tmp_path / "b.bin", tmp_path / "a.txt"]  # any order: sorted by name
    assert content_sha256(both) == "e94e138315ae49c9"


def test_a_checkpoint_file_is_recorded_by_path_and_hash(tiny_checkpoint):
    info = load_backbone(TINY_MODEL, str(tiny_checkpoint), device="cpu").info
    expected = content_sha256([tiny_checkpoint])
    assert info.weights == f"{tiny_checkpoint.resolve()} (sha256 {expected})"
    assert info.pretrained == str(tiny_checkpoint)
    assert load_backbone(TINY_MODEL, "random", device="cpu").info.weights == "random (seed 0)"


def test_a_local_dir_run_records_the_folder_not_the_default_tag(
    tiny_model_dir, image_folder, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["--data", str(image_folder), "--model", f"local-dir:{tiny_model_dir}", "--templates"]
    args += ["single", "--num-images", "4", "--attack", "pgd", "--steps", "1", "--defense"]
    assert evaluate_main([*args, "none", "--threat", "transfer", "--out", str(out)]) == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    files = [path for path in tiny_model_dir.iterdir() if path.is_file()]
    weights = f"local-dir:{tiny_model_dir.resolve()} (sha256 {content_sha256(files)})"
    assert settings["weights"] == weights
    assert settings["pretrained"] == f"local-dir:{tiny_model_dir}"  # --pretrained is not read
    page = (out / "report.html").read_text()
    assert f"<td>weights</td><td>{html.escape(weights)}, fp32</td>" in page
    assert "openai" not in page and "openai" not in json.dumps(settings)


def test_the_audit_json_records_the_folder(tiny_model_dir, cat_photo):
    backbone = load_backbone(f"local-dir:{tiny_model_dir}", device="cpu")
    playground = Playground(backbone, "single")
    result = run_audit(
        playground, cat_photo, "cat, dog", conditions="clean", checks="randomness", defenses=""
    )
    settings = result.to_dict()["settings"]
    files = [path for path in tiny_model_dir.iterdir() if path.is_file()]
    assert settings["weights"] == (
        f"local-dir:{tiny_model_dir.resolve()} (sha256 {content_sha256(files)})"
    )
    assert settings["pretrained"] == f"local-dir:{tiny_model_dir}"
