"""CLIPure-Diff: training a prior for a backbone, the purifier, and Diff in a request."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipure_core import AttackConfig, InputError, Playground, ZeroShotClassifier, craft_attack
from clipure_core.prior import load_prior, null_condition, prior_for
from clipure_core.prior.training import embed_folder
from clipure_core.purifiers import DiffPurifier
from clipure_core.train_prior import main as train_prior_main

from .conftest import LABELS
from .tolerance import RTOL, relative_error


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """24 synthetic photos: noisy colour fields in two families, in nested folders."""
    folder = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for index in range(24):
        base = torch.tensor([0.8, 0.2, 0.1] if index % 2 else [0.1, 0.3, 0.9])
        pixels = (base[:, None, None] + 0.2 * torch.rand(3, 40, 48, generator=generator)).clamp(
            0, 1
        )
        array = (pixels * 255).round().byte().permute(1, 2, 0).numpy()
        (folder / f"family{index % 2}").mkdir(exist_ok=True)
        Image.fromarray(array).save(folder / f"family{index % 2}" / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def trained_prior(backbone, image_folder, tmp_path_factory):
    """A prior trained with the CLI for the tiny backbone, in a priors folder."""
    priors = tmp_path_factory.mktemp("priors")
    out = priors / "tiny.safetensors"
    code = train_prior_main(
        [
            "--model",
            backbone.info.name,
            "--pretrained",
            backbone.info.pretrained,
            "--images",
            str(image_folder),
            "--out",
            str(out),
            "--epochs",
            "40",
            "--batch-size",
            "8",
            "--depth",
            "1",
            "--heads",
            "2",
            "--dim-head",
            "16",
            "--device",
            "cpu",
            "--lr",
            "1e-3",
        ]
    )
    assert code == 0
    return out


def test_training_lowers_the_loss_and_writes_a_loadable_prior(trained_prior, backbone):
    summary = json.loads(trained_prior.with_suffix(".json").read_text())
    losses = summary["training"]["loss_per_epoch"]
    assert len(losses) == 40 and summary["training"]["images"] == 24
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert summary["backbone"]["weights_id"] == backbone.info.weights_id
    prior = load_prior(trained_prior, device="cpu")  # config from the file's metadata
    assert prior.config.dim == 32 and prior.config.depth == 1
    assert not prior.config.condition_on_text_encodings


def test_embeddings_are_cached_on_disk(backbone, image_folder, monkeypatch):
    first = embed_folder(backbone, image_folder)
    assert first.shape == (24, 32)
    assert torch.allclose(first.norm(dim=-1), torch.ones(24))

    def fail(*_):
        raise AssertionError("cached embeddings should have been used")

    monkeypatch.setattr(backbone, "encode_image", fail)
    assert torch.equal(embed_folder(backbone, image_folder), first)


def test_prior_is_found_for_its_backbone_only(trained_prior, backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPURE_PRIORS_DIR", str(trained_prior.parent))
    assert prior_for(backbone) == str(trained_prior)
    from clipure_core import load_backbone

    other = load_backbone(backbone.info.name, "random", device="cpu")  # same arch, other weights
    assert prior_for(other) is None
    monkeypatch.setenv("CLIPURE_PRIORS_DIR", str(tmp_path))
    assert prior_for(backbone) is None
    with pytest.raises(InputError, match="CLIPure-Diff needs a diffusion prior"):
        DiffPurifier(backbone, "single")


@pytest.fixture(scope="module")
def purifier(backbone, trained_prior):
    return DiffPurifier(backbone, "single", prior=str(trained_prior), steps=4, step_size=0.5)


def seeded(seed, function, *args, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return function(*args, **kwargs)


def test_purification_is_seeded_keeps_unit_norm_and_traces_the_loss(purifier):
    z = torch.randn(3, 32)
    rows = []
    first = seeded(0, purifier, z, on_step=lambda step, z, loss=None: rows.append((step, loss)))
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.equal(first, seeded(0, purifier, z))
    assert not torch.equal(first, seeded(1, purifier, z))
    assert [step for step, _ in rows] == [0, 1, 2, 3, 4]
    assert all(loss.shape == (3,) for _, loss in rows[:-1]) and rows[-1][1] is None
    moved = torch.rad2deg(torch.acos(F.cosine_similarity(first, F.normalize(z, dim=-1))))
    assert (moved > 0.1).all()


def test_full_gradient_is_exact_and_differs_from_paper(backbone, trained_prior):
    prior = load_prior(trained_prior, device="cpu", dtype=torch.float64)
    purifier = DiffPurifier(backbone, "single", prior=prior, steps=2, step_size=0.3).double()
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 32, dtype=torch.float64, generator=generator).requires_grad_(True)
    # The reference's final "stable" layer norm divides by a detached row maximum, so finite
    # differences see that division (through the norm's eps) and autograd does not: a tiny,
    # intended gap, hence the tolerances.
    assert torch.autograd.gradcheck(
        lambda x: seeded(4, purifier, x, gradient="full"), (z,), atol=1e-4, rtol=1e-3
    )
    grads = {}
    for mode in ("full", "paper"):
        point = z.detach().clone().requires_grad_(True)
        seeded(4, purifier, point, gradient=mode).sum().backward()
        grads[mode] = point.grad
    assert not torch.allclose(grads["full"], grads["paper"])


def test_null_condition_token_encodings_stop_at_the_end_token(backbone):
    tokens_mode = null_condition(backbone, "single", "tokens")
    pooled_mode = null_condition(backbone, "single", "pooled")
    length = len(backbone.tokenizer.encode("a photo of a .")) + 2  # start and end tokens
    assert tokens_mode.text_encodings.shape == (77, 64)  # the text tower's width
    assert (tokens_mode.text_encodings[:length] != 0).any(dim=-1).all()
    assert (tokens_mode.text_encodings[length:] == 0).all()
    # open_clip's encode_text at 77 tokens against ours at the prompt's length: other kernels
    pooled = backbone.encode_text(["a photo of a ."])[0]
    assert relative_error(pooled_mode.text_encodings[0], pooled) < RTOL
    assert relative_error(tokens_mode.text_embed, F.normalize(pooled, dim=0)) < RTOL
    with pytest.raises(InputError, match="text encodings"):
        null_condition(backbone, "single", "words")


def test_eot_attack_on_the_stochastic_defense_is_reproducible(backbone, purifier, cat_photo):
    classifier = ZeroShotClassifier(backbone, LABELS, "single")
    defended = classifier.defended(purifier, gradient="full")
    pixels = backbone.prepare(cat_photo).unsqueeze(0)
    config = AttackConfig("pgd", "linf", 8 / 255, 2, eot_samples=2)
    labels = torch.tensor([0])
    first = craft_attack(defended, pixels, labels, config, seed=3)
    assert torch.equal(first, craft_attack(defended, pixels, labels, config, seed=3))
    assert (first - pixels).abs().max() <= 8 / 255 + 1e-6


def test_diff_in_a_request_with_diagnostics(backbone, trained_prior, cat_photo):
    playground = Playground(backbone, templates="single")
    settings = {"clipure_diff": {"prior": str(trained_prior), "steps": 3, "step_size": 0.5}}
    run = dict(
        image=cat_photo,
        labels=LABELS,
        attack=AttackConfig(steps=2, eot_samples=2),
        threat="bpda",
        defenses=["clipure_cos", "clipure_diff"],
        seed=5,
        defense_settings=settings,
    )
    result = playground.run(**run)
    data = result.to_dict()
    assert set(data["probabilities"]["adversarial"]) == {
        "undefended",
        "clipure_cos",
        "clipure_diff",
    }
    assert set(result.adversarial_images) == {"undefended", "clipure_cos", "clipure_diff"}
    trajectory = data["diagnostics"]["clipure_diff"]["trajectory"]
    assert len(trajectory) == 4 and "denoising_loss" in trajectory[0]
    assert data["settings"]["defenses"]["clipure_diff"]["t_min"] == 900
    again = playground.run(**run).to_dict()
    assert again["probabilities"] == data["probabilities"]
    with pytest.raises(InputError, match="timesteps"):
        playground.run(
            **{
                **run,
                "defense_settings": {"clipure_diff": {"prior": str(trained_prior), "t_max": 5000}},
            }
        )


def test_train_prior_cli_refuses_bad_options(capsys, backbone, image_folder, tmp_path):
    base = [
        "--model",
        backbone.info.name,
        "--pretrained",
        backbone.info.pretrained,
        "--images",
        str(image_folder),
    ]
    assert train_prior_main([*base, "--out", str(tmp_path / "p.pt")]) == 2
    assert "--out must end in .safetensors" in capsys.readouterr().err
    assert train_prior_main([*base, "--out", str(tmp_path / "p.safetensors"), "--epochs", "0"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    code = train_prior_main(
        [*base[:4], "--images", str(empty), "--out", str(tmp_path / "p.safetensors")]
    )
    assert code == 2 and "no images" in capsys.readouterr().err


def test_cli_runs_diff_with_a_prior(capsys, trained_prior, tiny_checkpoint):
    from clipure_core.cli import main

    from .conftest import ASSETS, TINY_MODEL

    code = main(
        [
            "predict",
            str(ASSETS / "coffee.png"),
            "--labels",
            "cup, bowl, plate",
            "--model",
            TINY_MODEL,
            "--pretrained",
            str(tiny_checkpoint),
            "--steps",
            "2",
            "--defense",
            "clipure_cos,clipure_diff",
            "--prior",
            str(trained_prior),
            "--diff-steps",
            "2",
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["defenses"]["clipure_diff"]["steps"] == 2
    assert len(data["diagnostics"]["clipure_diff"]["trajectory"]) == 3


def test_app_offers_diff_when_a_prior_exists(running_app, trained_prior, monkeypatch, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from .conftest import ASSETS

    client = Client(running_app, verbose=False)
    request = {
        "image": handle_file(str(ASSETS / "chelsea.png")),
        "labels": "cat, dog, car",
        "method": "pgd",
        "norm": "linf",
        "eps": 4,
        "steps": 2,
        "threat": "transfer",
        "defenses": "clipure_cos,clipure_diff",
        "seed": 0,
        "api_name": "/playground",
    }
    monkeypatch.setenv("CLIPURE_PRIORS_DIR", str(tmp_path))
    with pytest.raises(AppError, match="CLIPure-Diff needs a diffusion prior"):
        client.predict(**request)
    monkeypatch.setenv("CLIPURE_PRIORS_DIR", str(trained_prior.parent))
    data = client.predict(**request)
    assert "clipure_diff" in data["probabilities"]["adversarial"]
    assert data["diagnostics"]["clipure_diff"]["trajectory"][0]["denoising_loss"] > 0
    monkeypatch.setenv("CLIPURE_PRIORS_DIR", str(tmp_path))
    with pytest.raises(AppError, match="CLIPure-Diff needs a diffusion prior"):
        client.predict(**request)  # no stale purifier once the prior is gone


def test_evaluation_does_not_reuse_the_attacks_random_draws(
    backbone, trained_prior, cat_photo, monkeypatch
):
    """With FGSM the attack's single query and the evaluation used to draw the same (t, noise);
    the evaluation now has its own seed."""
    states: list[torch.Tensor] = []
    original = DiffPurifier.denoising_loss

    def recording(self, z):
        states.append(torch.random.get_rng_state().clone())
        return original(self, z)

    monkeypatch.setattr(DiffPurifier, "denoising_loss", recording)
    playground = Playground(backbone, templates="single")
    playground.run(
        cat_photo,
        LABELS,
        AttackConfig("fgsm", "linf", 4 / 255, 1),
        "paper",
        ["clipure_diff"],
        seed=0,
        defense_settings={"clipure_diff": {"prior": str(trained_prior), "steps": 1}},
    )
    # the attack's queries (2 probing for randomness, FGSM's one, its step judged, and, Diff
    # being stochastic, 10 draws judging that step: see docs/attacks.md), the 8-bit rounding's
    # two judging forwards (docs/rounding.md), then evaluation: clean and adversarial
    # purification, one step each
    attack_states, evaluation_states = states[:-2], states[-2:]
    assert len(attack_states) == 16
    for attack_state in attack_states:
        assert all(not torch.equal(attack_state, state) for state in evaluation_states)
