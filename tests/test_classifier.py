"""Zero-shot classifier, prompts and the text-embedding caches."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from clipure_core import CosPurifier, InputError, ZeroShotClassifier, parse_labels
from clipure_core.prompts import TEMPLATE_PRESETS, resolve_templates

from .conftest import LABELS
from .tolerance import RTOL, relative_error


def test_class_embeddings_are_the_normalised_template_ensemble(backbone):
    templates = ["a photo of a {}.", "a drawing of a {}.", "itap of a {}."]
    classifier = ZeroShotClassifier(backbone, LABELS[:2], templates)
    for index, label in enumerate(LABELS[:2]):
        texts = F.normalize(backbone.encode_text([t.format(label) for t in templates]), dim=-1)
        expected = F.normalize(texts.mean(dim=0), dim=0)
        # 6 prompts encoded together against 3: other batches, the float32 rule
        assert relative_error(classifier.class_embeddings[index], expected) < RTOL


def test_logits_apply_the_logit_scale_to_cosines(backbone):
    classifier = ZeroShotClassifier(backbone, LABELS, "single")
    pixels = torch.rand(3, 3, 32, 32)
    z = backbone.encode_image(pixels)
    cosines = F.normalize(z, dim=-1) @ classifier.class_embeddings.T
    assert torch.allclose(classifier(pixels), backbone.logit_scale * cosines, atol=1e-5)
    assert backbone.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip init


def test_defended_classifier_composes_purifier_and_head(backbone):
    classifier = ZeroShotClassifier(backbone, LABELS, "single")
    purifier = CosPurifier(backbone, "single", steps=1, step_size=0.5)
    defended = classifier.defended(purifier, gradient="bpda")
    pixels = torch.rand(2, 3, 32, 32)
    expected = classifier.logits_from_embeddings(purifier(backbone.encode_image(pixels)))
    assert torch.allclose(defended(pixels), expected, atol=1e-5)
    assert not torch.allclose(defended(pixels), classifier(pixels), atol=1e-3)


def test_presets_and_templates():
    assert len(TEMPLATE_PRESETS["ensemble"]) == 80
    assert resolve_templates("single") == ("a photo of a {}.",)
    assert parse_labels("cifar10")[0][:3] == ["airplane", "automobile", "bird"]
    assert len(parse_labels("imagenet1k")[0]) == 1000
    with pytest.raises(InputError, match="exactly one"):
        resolve_templates(["no placeholder"])


def test_labels_are_cleaned_and_deduplicated():
    labels, notices = parse_labels(" cat , dog,,cat ,  sports   car ")
    assert labels == ["cat", "dog", "sports car"]
    assert notices == ["1 duplicate label(s) removed."]
    for empty in ("", " , ,", []):
        with pytest.raises(InputError, match="at least one class name"):
            parse_labels(empty)
    with pytest.raises(InputError, match="at most 1000"):
        parse_labels([f"class {i}" for i in range(1001)])
    with pytest.raises(InputError, match="at most 200 characters"):
        parse_labels(["x" * 201])


def test_parsed_labels_pass_through_a_second_parse_with_their_notices():
    labels, _ = parse_labels("cat, dog, cat")
    again, notices = parse_labels(labels)
    assert again is labels  # not parsed a second time
    assert again == ["cat", "dog"] and notices == ["1 duplicate label(s) removed."]
    # a plain list is parsed (cleaned) whatever its origin
    assert parse_labels([" cat ", "cat"]) == (["cat"], ["1 duplicate label(s) removed."])
    assert pickle.loads(pickle.dumps(labels)).notices == ["1 duplicate label(s) removed."]
