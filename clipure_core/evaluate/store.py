"""Finished batches on disk (OUT/partial/), written atomically so that a crash loses at most
the batch in flight, and a run's settings, so that a resume cannot mix two runs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path

from ..errors import InputError

PARTIAL_DIR = "partial"
SETTINGS_FILE = "settings.json"
_BATCH_FILE = re.compile(r"^batch_(\d+)\.json$")
_LOGGER = logging.getLogger(__name__)


def settings_hash(settings: dict) -> str:
    """A stable digest of JSON-serialisable settings."""
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_json_atomic(path: Path, data: dict | list, indent: int | None = None) -> None:
    """Write JSON to `path` via a temporary file and a rename: readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class PartialStore:
    """OUT/partial/: settings.json and one batch_NNNNN.json per finished batch (in the
    subfolder `stage` for a run made of stages)."""

    def __init__(self, out: Path, settings: dict, stage: str | None = None) -> None:
        self.folder = Path(out) / PARTIAL_DIR
        if stage is not None:
            self.folder = self.folder / stage
        self.settings = settings
        self.hash = settings_hash(settings)

    def path(self, batch: int) -> Path:
        return self.folder / f"batch_{batch:05d}.json"

    def check_settings(self) -> str | None:
        """Record the settings on first use; on a resume, the message (else None) that says
        how they differ from those stored."""
        stored_path = self.folder / SETTINGS_FILE
        if not stored_path.is_file():
            write_json_atomic(stored_path, self.settings, indent=2)
            return None
        return self._compare(part=False)

    def check_stored(self) -> str | None:
        """`check_settings` for a part of a run's settings (this store's keys only), without
        recording anything: None when nothing is stored yet or that part matches."""
        return self._compare(part=True)

    def _compare(self, part: bool) -> str | None:
        stored_path = self.folder / SETTINGS_FILE
        if not stored_path.is_file():
            return None
        try:
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            return f"{stored_path} is unreadable ({error}); delete {self.folder} to start over."
        if part:
            stored = {key: stored.get(key, "(absent)") for key in self.settings}
        if settings_hash(stored) == self.hash:
            return None
        changes = _differences(stored, self.settings)
        shown = "; ".join(f"{key}: {old} -> {new}" for key, old, new in changes[:5])
        return (
            f"{self.folder.parent} holds a run with other settings ({shown}). "
            f"Use another --out, or delete {self.folder} to start this run over."
        )

    def done(self) -> set[int]:
        """Batches finished under these settings (unreadable or foreign files are ignored)."""
        if not self.folder.is_dir():
            return set()
        finished = set()
        for name in os.listdir(self.folder):
            match = _BATCH_FILE.match(name)
            if match and self._valid(int(match.group(1))):
                finished.add(int(match.group(1)))
        return finished

    def _valid(self, batch: int) -> bool:
        try:
            record = self.read(batch)
        except InputError as error:
            _LOGGER.warning("%s; the batch will be run again.", error)
            return False
        return record.get("settings_hash") == self.hash and record.get("batch") == batch

    def write(self, record: dict) -> None:
        """Store one finished batch record (it gets this run's settings hash)."""
        write_json_atomic(self.path(record["batch"]), {**record, "settings_hash": self.hash})

    def read(self, batch: int) -> dict:
        path = self.path(batch)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"cannot read finished batch {path}: {error}") from error


def _differences(old: object, new: object, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, old, new) for every leaf that differs between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            changes += _differences(old.get(key, "(absent)"), new.get(key, "(absent)"), name)
        return changes
    if old == new:
        return []
    return [(prefix or "settings", _short(old), _short(new))]


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."
