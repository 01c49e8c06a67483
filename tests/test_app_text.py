"""The app's text encoding: progress with the time left, Stop at the next batch, and a refusal
with the estimate and the ways out when it would hold the queue too long."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from app.catalog import model_choices
from app.service import Cancelled, PlaygroundRequest, PlaygroundService
from clipure_core import InputError
from clipure_core import text_embeddings as cache
from clipure_core.prompts import LABEL_PRESETS, TEMPLATE_PRESETS, null_prompts

from .conftest import ASSETS, TINY_MODEL

PHOTO = ASSETS / "chelsea.png"
ENSEMBLE = TEMPLATE_PRESETS["ensemble"]


@pytest.fixture
def choice(tiny_checkpoint):
    return model_choices(TINY_MODEL, str(tiny_checkpoint))[0]


def fresh_labels(tag: str, count: int) -> str:
    return ", ".join(f"{tag} creature {i}" for i in range(count))


class Recorder:
    def __init__(self) -> None:
        self.text: list[tuple[int, int, str]] = []
        self.queries: list[int] = []

    def __call__(self, done: int, total: int, description: str) -> None:
        if description.startswith("text embeddings"):
            self.text.append((done, total, description))
        else:
            assert description == "attack: model queries"
            self.queries.append(done)


def test_new_labels_report_text_progress_then_the_attack(choice, monkeypatch):
    monkeypatch.setattr(cache, "_RATES", {})  # nothing measured yet
    service = PlaygroundService("cpu")
    progress = Recorder()
    request = PlaygroundRequest(labels=fresh_labels("progress", 3), steps=2)
    groups = cache.class_prompt_groups(request.labels.split(", "), ENSEMBLE)
    missing = cache.missing_prompts(service.backbone(choice), [*groups, null_prompts(ENSEMBLE)])
    assert missing in (240, 320)  # 3 labels x 80 templates, and the null prompt's 80 if new
    result = service.run(choice, Image.open(PHOTO), request, progress)
    assert len(result.labels) == 3
    # from 0 to all the prompts, then the model queries
    assert progress.text[0][:2] == (0, missing) and progress.text[-1][:2] == (missing, missing)
    assert "measuring the speed" in progress.text[0][2]
    assert "left" in progress.text[-1][2] and f"{missing} prompts" in progress.text[-1][2]
    # PGD: 2 forwards probing for randomness, 2 steps, its last iterate judged
    assert progress.queries == [1, 2, 3, 4, 5]
    again = Recorder()
    service.run(choice, Image.open(PHOTO), request, again)
    assert again.text == [] and again.queries == [1, 2, 3, 4, 5]  # cached: no text encoding


def test_stop_ends_the_text_encoding_at_its_next_batch(choice, monkeypatch):
    monkeypatch.setattr(cache, "CHUNK_PROMPTS", 80)
    service = PlaygroundService("cpu")
    cancel = threading.Event()
    progress = Recorder()

    def stop_after_first_batch(done, total, description):
        progress(done, total, description)
        if done > 0:
            cancel.set()

    request = PlaygroundRequest(labels=fresh_labels("stopped", 4), steps=2)
    with pytest.raises(Cancelled):
        service.run(choice, Image.open(PHOTO), request, stop_after_first_batch, cancel)
    assert [done for done, _, _ in progress.text] == [0, 80]
    assert progress.queries == []  # no attack started
    groups = cache.class_prompt_groups(request.labels.split(", "), ENSEMBLE)
    assert cache.missing_prompts(service.backbone(choice), groups) == 3 * 80  # 1st one cached


def test_a_long_encoding_is_refused_with_the_estimate_and_the_ways_out(choice, monkeypatch):
    service = PlaygroundService("cpu", text_limit_s=60)
    backbone = service.backbone(choice)
    monkeypatch.setitem(cache._RATES, cache._rate_key(backbone), 100.0)  # prompts/s measured
    progress = Recorder()
    groups = cache.class_prompt_groups(LABEL_PRESETS["imagenet1k"], ENSEMBLE)
    groups.append(null_prompts(ENSEMBLE))
    missing = cache.missing_prompts(backbone, groups)  # about 80,080 (a few labels are cached)
    with pytest.raises(InputError) as refused:
        service.run(choice, Image.open(PHOTO), PlaygroundRequest(labels="imagenet1k"), progress)
    message = str(refused.value)
    assert f"{missing:,} text prompts of these labels are not cached yet" in message
    assert "(1,000 labels x 80 templates)" in message
    assert f"takes about {missing / 100 / 60:.1f} min on this cpu (100 prompts/s)" in message
    assert "more than the 60 s this app allows" in message and "CLIPURE_TEXT_LIMIT_S" in message
    assert "GPU" in message and "single template (1,000 prompts, about 10 s" in message
    assert f"cache-text --labels imagenet1k --model {TINY_MODEL} --pretrained" in message
    assert progress.text == []  # refused before encoding anything
    # the single template's 1,000 + 1 prompts take about 10 s at that rate: they run
    monkeypatch.setattr(service, "text_limit_s", 11)
    request = PlaygroundRequest(labels="imagenet1k", steps=1, templates="single")
    single = cache.class_prompt_groups(LABEL_PRESETS["imagenet1k"], ["a photo of a {}."])
    missing = cache.missing_prompts(backbone, [*single, ["a photo of a ."]])
    assert missing > 900  # (a few may be cached by other tests)
    assert service.run(choice, Image.open(PHOTO), request, progress).labels[0] == "tench"
    assert progress.text[0][:2] == (0, missing)
    assert f"about {missing / 100:.0f} s left" in progress.text[0][2]


def test_without_a_measurement_the_first_chunk_measures_then_refuses(choice, monkeypatch):
    monkeypatch.setattr(cache, "_RATES", {})
    monkeypatch.setattr(cache, "CHUNK_PROMPTS", 160)
    service = PlaygroundService("cpu", text_limit_s=1e-6)
    progress = Recorder()
    request = PlaygroundRequest(labels=fresh_labels("refused", 5), steps=2)
    with pytest.raises(InputError, match="The labels encoded until now stay cached"):
        service.run(choice, Image.open(PHOTO), request, progress)
    # the first chunk (2 labels) ran while the speed was being measured, then the refusal
    assert [done for done, _, _ in progress.text] == [0]
    assert "measuring the speed" in progress.text[0][2]
    groups = cache.class_prompt_groups(request.labels.split(", "), ENSEMBLE)
    assert cache.missing_prompts(service.backbone(choice), groups) == 3 * 80


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CLIPURE_TEXT_LIMIT_S", "300")
    assert PlaygroundService("cpu").text_limit_s == 300
    monkeypatch.delenv("CLIPURE_TEXT_LIMIT_S")
    assert PlaygroundService("cpu").text_limit_s == 120
    with pytest.raises(InputError, match="templates 'many'"):
        PlaygroundService("cpu").run(
            model_choices(TINY_MODEL, "random")[0],
            Image.open(PHOTO),
            PlaygroundRequest(labels="a, b", templates="many"),
        )
