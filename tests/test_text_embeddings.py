"""Text embeddings: at the prompts' own length (equal to open_clip's encode_text), cached per
label in memory and on disk, with progress, stopping, and no lock held while encoding."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP

from clipure_core import Playground, ZeroShotClassifier, load_backbone
from clipure_core import text_embeddings as cache
from clipure_core.prompts import TEMPLATE_PRESETS
from clipure_core.text_encoder import encode_tokens, fallback_reason

from .conftest import TINY_CONFIG
from .tolerance import RTOL, relative_error

TEMPLATES = TEMPLATE_PRESETS["ensemble"]
# Short and long prompts, in no particular order; the last one is truncated at 77 tokens.
PROMPTS = [
    "a photo of a cat.",
    "a dog",
    "a bad photo of the coffee mug.",
    "",
    "itap of a sports car.",
    "a black and white photo of a very large and rather unusual airplane in the sky.",
    "ein Foto von einer Katze 🐈",
    "a photo of a " + "very " * 90 + "long label.",
    "art of the tiger.",
]


def reference(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's own encode_text, padded to the full context."""
    with torch.no_grad():
        return model.encode_text(tokens).float()


class TransformerLengths:
    """Records the sequence length of every pass through a text transformer."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.lengths: list[int] = []
        self.handle = transformer.register_forward_pre_hook(self.record)

    def record(self, _module, args) -> None:
        self.lengths.append(args[0].shape[1])


def test_tiny_model_runs_at_the_prompts_length_and_equals_encode_text(backbone):
    assert fallback_reason(backbone.model) is None and backbone.text_at_prompt_length
    tokens = backbone.tokenize(PROMPTS)
    expected = reference(backbone.model, tokens)
    recorder = TransformerLengths(backbone.model.transformer)
    try:
        actual = backbone.encode_text(PROMPTS, batch_size=4)
    finally:
        recorder.handle.remove()
    assert relative_error(actual, expected) < RTOL
    # sorted by length: the short prompts run short, only the truncated one needs all 77
    assert sorted(recorder.lengths) == recorder.lengths and recorder.lengths[-1] == 77
    assert recorder.lengths[0] < 10


def test_random_vit_b_32_equals_encode_text():
    backbone = load_backbone("ViT-B-32", "random", device="cpu")
    assert backbone.text_at_prompt_length
    prompts = PROMPTS + [template.format("coffee mug") for template in TEMPLATES[:15]]
    expected = reference(backbone.model, backbone.tokenize(prompts))
    actual = backbone.encode_text(prompts, batch_size=8)
    assert relative_error(actual, expected) < RTOL


def tiny_variant(model_class=CLIP, **text_cfg) -> torch.nn.Module:
    config = copy.deepcopy(TINY_CONFIG)
    config["text_cfg"].update(text_cfg)
    torch.manual_seed(0)
    return model_class(**config).eval()


@pytest.mark.parametrize(
    ("model_class", "text_cfg", "reason"),
    [
        (CustomTextCLIP, {}, "not open_clip's CLIP class"),
        (CLIP, {"no_causal_mask": True}, "no causal attention mask"),
        (CLIP, {"pool_type": "last"}, "not end-token pooling"),
    ],
    ids=["custom-text-tower", "bidirectional", "last-token-pooling"],
)
def test_other_text_towers_fall_back_to_encode_text(model_class, text_cfg, reason):
    model = tiny_variant(model_class, **text_cfg)
    assert reason in fallback_reason(model)
    tokens = open_clip.get_tokenizer("ViT-B-32")(PROMPTS)
    expected = reference(model, tokens)
    calls = []
    original = model.encode_text
    model.encode_text = lambda text: calls.append(text.shape) or original(text)
    actual = encode_tokens(model, tokens, batch_size=4)
    assert calls == [(4, 77), (4, 77), (1, 77)]  # the model's own, padded, in input order
    # batches of 4 against one batch of 9: other kernels, so equal only to the float32 rule
    assert relative_error(actual, expected) < RTOL


def test_a_subclass_with_its_own_encode_text_falls_back():
    class Mine(CLIP):
        def encode_text(self, text, normalize=False):
            return super().encode_text(text, normalize) * 2

    model = tiny_variant(Mine)
    assert "overrides encode_text" in fallback_reason(model)
    tokens = open_clip.get_tokenizer("ViT-B-32")(PROMPTS[:3])
    # one batch of 3 both ways: the same computation
    assert torch.allclose(encode_tokens(model, tokens), reference(model, tokens))


def test_eos_pooling_runs_at_the_prompts_length_too():
    model = tiny_variant(pool_type="eos", eos_id=49407)
    assert fallback_reason(model) is None
    tokens = open_clip.get_tokenizer("ViT-B-32")(PROMPTS)
    assert relative_error(encode_tokens(model, tokens, 3), reference(model, tokens)) < RTOL


def test_progress_after_every_batch_and_stop_at_the_next(backbone):
    seen = []
    backbone.encode_text(PROMPTS, batch_size=4, on_batch=seen.append)
    assert seen == [0, 4, 8, 9]  # before each batch, and at the end

    class Stop(Exception):
        pass

    def stop_after_first(done):
        seen.append(done)
        if done:
            raise Stop

    seen.clear()
    recorder = TransformerLengths(backbone.model.transformer)
    try:
        with pytest.raises(Stop):
            backbone.encode_text(PROMPTS, batch_size=4, on_batch=stop_after_first)
    finally:
        recorder.handle.remove()
    assert seen == [0, 4] and len(recorder.lengths) == 1  # the second batch never ran


# --- the cache ----------------------------------------------------------------------------


class CountingEncoder:
    """Wraps backbone.normalized_text and counts the prompts it encodes."""

    def __init__(self, backbone, monkeypatch) -> None:
        self.prompts: list[str] = []
        self.original = backbone.normalized_text
        monkeypatch.setattr(backbone, "normalized_text", self)

    def __call__(self, texts, on_batch=None):
        self.prompts += list(texts)
        return self.original(texts, on_batch=on_batch)


def test_each_label_is_cached_on_its_own(backbone, monkeypatch):
    monkeypatch.setattr(cache, "_MEMORY", OrderedDict())
    counter = CountingEncoder(backbone, monkeypatch)
    templates = TEMPLATES[:10]
    five = cache.class_embeddings(backbone, ["ibex", "gnu", "emu", "yak", "kiwi"], templates)
    assert len(counter.prompts) == 50
    counter.prompts.clear()
    six = cache.class_embeddings(backbone, ["ibex", "gnu", "emu", "yak", "kiwi", "oryx"], templates)
    assert counter.prompts == [t.format("oryx") for t in templates]  # one label's worth
    assert torch.equal(six[:5], five)
    counter.prompts.clear()
    shuffled = cache.class_embeddings(backbone, ["oryx", "emu", "ibex"], templates)
    assert counter.prompts == [] and torch.equal(shuffled[1], five[2])
    # the same as encoding each label's templates alone (sorting and batching aside)
    alone = backbone.normalized_text([t.format("gnu") for t in templates]).mean(dim=0)
    alone = F.normalize(alone, dim=0)
    assert relative_error(five[1], alone) < RTOL  # 10 prompts against 50: other batches


def test_text_embeddings_are_cached_in_memory_and_on_disk(backbone, monkeypatch):
    groups = [["a photo of a zebra.", "a zebra."], ["a photo of a yak."]]
    first = cache.prompt_group_embeddings(backbone, groups)
    for group in groups:
        assert cache._path(cache.group_key(backbone, group)).is_file()
    monkeypatch.setattr(cache, "_MEMORY", OrderedDict())

    def fail(*_, **__):
        raise AssertionError("the disk cache should have answered")

    monkeypatch.setattr(backbone, "normalized_text", fail)
    assert cache.missing_prompts(backbone, groups) == 0
    second = cache.prompt_group_embeddings(backbone, groups)
    assert torch.equal(first, second)
    third = cache.prompt_group_embeddings(backbone, groups)
    assert torch.equal(third, second)
    assert cache.missing_prompts(backbone, [["a photo of an okapi."], groups[0]]) == 1
    with pytest.raises(AssertionError, match="disk cache"):
        cache.prompt_group_embeddings(backbone, [["a photo of an okapi."]])


def test_the_key_holds_model_weights_precision_prompts_and_versions(backbone):
    key = cache.group_key(backbone, ["a photo of a cat."])
    assert key == cache.group_key(backbone, ["a photo of a cat."])
    assert key != cache.group_key(backbone, ["a photo of a dog."])
    for change in ({"precision": "bf16"}, {"weights_id": "other"}, {"name": "ViT-B-16"}):
        other = SimpleNamespace(info=dataclasses.replace(backbone.info, **change))
        assert cache.group_key(other, ["a photo of a cat."]) != key


def test_unreadable_cache_file_is_recomputed(backbone, monkeypatch):
    groups = [["a photo of a lynx."]]
    expected = cache.prompt_group_embeddings(backbone, groups)
    monkeypatch.setattr(cache, "_MEMORY", OrderedDict())
    cache._path(cache.group_key(backbone, groups[0])).write_bytes(b"garbage")
    assert torch.allclose(cache.prompt_group_embeddings(backbone, groups), expected)


def test_progress_counts_prompts_and_a_stop_keeps_the_finished_chunks(backbone, monkeypatch):
    monkeypatch.setattr(cache, "CHUNK_PROMPTS", 20)
    labels = [f"stopped label {i}" for i in range(6)]
    templates = TEMPLATES[:10]
    seen = []

    def stop_before_third_chunk(done, total):
        seen.append((done, total))
        if done >= 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.class_embeddings(backbone, labels, templates, stop_before_third_chunk)
    assert seen == [(0, 60), (20, 60), (20, 60), (40, 60)]  # chunks of 2 labels x 10
    groups = cache.class_prompt_groups(labels, templates)
    assert cache.missing_prompts(backbone, groups) == 20  # the two finished chunks are cached
    assert cache.measured_rate(backbone) > 0
    seen.clear()
    with cache.text_progress(lambda done, total: seen.append((done, total))):
        cache.class_embeddings(backbone, labels, templates)
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)


def test_tqdm_bar_for_the_command_line(backbone, capsys):
    with cache.tqdm_progress():
        cache.class_embeddings(backbone, ["quokka", "numbat"], TEMPLATES)
    err = capsys.readouterr().err
    assert "text embeddings" in err and "160/160" in err and "prompt" in err


def test_a_request_with_cached_labels_never_waits_for_one_that_encodes(backbone):
    """Thread A encodes new labels and is held inside the encoder; thread B, whose labels are
    cached, gets its classifier meanwhile, through the same Playground."""
    playground = Playground(backbone, templates="single")
    playground.classifier(["cat", "dog"])  # cached
    inside, release = threading.Event(), threading.Event()

    def hold(done, total):
        inside.set()
        assert release.wait(120), "never released"

    errors = []

    def encode_new():
        try:
            with cache.text_progress(hold):
                playground.classifier(["held wombat", "held platypus"])
        except Exception as error:
            errors.append(error)

    worker = threading.Thread(target=encode_new)
    worker.start()
    try:
        assert inside.wait(120), errors
        other: list = []

        def read_cached():
            other.append(playground.classifier(["cat", "dog"]))

        reader = threading.Thread(target=read_cached)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "a cached request waited for an encoding one"
        assert isinstance(other[0], ZeroShotClassifier)
        cached = (backbone, ["dog", "cat"], ["a photo of a {}."])  # without the Playground
        direct = threading.Thread(target=cache.class_embeddings, args=cached)
        direct.start()
        direct.join(10)
        assert not direct.is_alive()
    finally:
        release.set()
        worker.join(30)
    assert not errors
