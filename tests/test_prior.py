"""The latent prior: golden comparison with dalle2-pytorch 1.15.6 and checkpoint loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from clipure_core import InputError, WeightsUnavailableError
from clipure_core.prior import LatentPrior, PriorConfig, load_prior

from .conftest import fill_hf_cache
from .tolerance import RTOL, relative_error

GOLDEN = __import__("pathlib").Path(__file__).parent / "fixtures" / "prior_golden.safetensors"


@pytest.fixture(scope="module")
def golden():
    """Reference weights, inputs and outputs made by tests/fixtures/make_prior_golden.py."""
    with safe_open(str(GOLDEN), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    config = {**json.loads(metadata["net"]), **json.loads(metadata["prior"])}
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    data = {k: v for k, v in tensors.items() if not k.startswith("state.")}
    return config, state, data


def assert_matches_reference(prior: LatentPrior, data: dict) -> None:
    inputs = (data["input.image_embed"], data["input.times"])
    text = (data["input.text_embed"], data["input.text_encodings"])
    with torch.no_grad():
        forward = prior.net(*inputs, *text)
        null_conditions = prior.net(*inputs, *text, 1.0, 1.0)
        loss = prior.denoise_loss(inputs[0], inputs[1], data["input.noise"], *text)
    # the reference ran on another machine: equal to the float32 rule, not bit for bit
    assert relative_error(forward, data["output.net_forward"]) < RTOL
    assert relative_error(null_conditions, data["output.net_forward_null_conditions"]) < RTOL
    assert loss.item() == pytest.approx(data["output.p_losses"].item(), rel=RTOL)


def test_golden_plain_state_dict(golden, tmp_path):
    config, state, data = golden
    path = tmp_path / "prior.pt"
    torch.save(state, path)
    prior = load_prior(path, config=config, device="cpu")
    assert_matches_reference(prior, data)
    assert prior.image_embed_scale == pytest.approx(32**0.5)


def test_golden_ema_with_clip_subtree_and_without_derived_buffers(golden, tmp_path):
    config, state, data = golden
    learned = {
        k: v
        for k, v in state.items()
        if not k.startswith("noise_scheduler.") and not k.endswith("rotary_emb.freqs")
    }
    wrapped = {
        "ema_model": {**learned, "clip.visual.proj": torch.zeros(2)},
        "model": {k: torch.zeros_like(v) for k, v in learned.items()},
    }
    path = tmp_path / "trainer.pth"
    torch.save(wrapped, path)
    (tmp_path / "trainer.json").write_text(json.dumps(config))
    assert_matches_reference(load_prior(path, device="cpu"), data)


def test_golden_safetensors_with_config_metadata(golden, tmp_path):
    config, state, data = golden
    path = tmp_path / "prior.safetensors"
    save_file(state, str(path), metadata={"clipure_prior_config": json.dumps(config)})
    assert_matches_reference(load_prior(path, device="cpu"), data)


def test_golden_from_hf_hub_cache_offline(golden, tmp_path, no_network):
    config, state, data = golden
    weights = tmp_path / "w.pt"
    torch.save({"ema_model": state}, weights)
    fill_hf_cache(tmp_path, "tests/prior", {"vit-tiny/prior.pth": weights.read_bytes()})
    prior = load_prior(
        "hf-hub:tests/prior/vit-tiny/prior.pth",
        config=config,
        device="cpu",
        cache_dir=str(tmp_path),
    )
    assert_matches_reference(prior, data)


def test_mismatched_config_and_bad_files_are_clear_errors(golden, tmp_path):
    config, state, _ = golden
    path = tmp_path / "prior.pt"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailableError, match="does not match its config"):
        load_prior(path, config={**config, "depth": 3})
    with pytest.raises(WeightsUnavailableError, match="shape"):
        load_prior(path, config={**config, "num_timesteps": 500})
    with pytest.raises(InputError, match="unknown prior config keys: colour"):
        load_prior(path, config={**config, "colour": 1})
    with pytest.raises(InputError, match="self_cond"):
        load_prior(path, config={**config, "self_cond": True})
    with pytest.raises(InputError, match="no config for prior"):
        load_prior(path)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_prior(tmp_path / "missing.pth", config=config)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_in_a_prior_is_refused(golden, tmp_path):
    config, _, _ = golden
    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    torch.save({"ema_model": {"net.learned_query": _Payload(marker)}}, path)
    with pytest.raises(WeightsUnavailableError, match="refused"):
        load_prior(path, config=config)
    assert not marker.exists()


def test_known_laion_config_is_the_papers():
    from clipure_core.prior.loading import KNOWN_CONFIGS, LAION_VIT_L14

    config = PriorConfig.from_dict(KNOWN_CONFIGS[LAION_VIT_L14])
    assert (config.dim, config.depth, config.heads, config.dim_head) == (768, 24, 32, 64)
    assert config.normformer and config.condition_on_text_encodings
    assert config.cond_drop_prob == 0.1  # what the reference still applied at test time
    prior = LatentPrior(config)
    names = set(prior.state_dict())
    assert "net.causal_transformer.layers.23.1.3.g" in names  # normformer norm, 24 layers
    assert prior.net.null_text_encodings.shape == (1, 256, 768)


def test_dalle2_training_config_layout_and_stored_buffers(golden, tmp_path, caplog):
    config, state, data = golden
    network_keys = {
        "dim",
        "depth",
        "dim_head",
        "heads",
        "normformer",
        "ff_mult",
        "num_timesteps",
        "num_time_embeds",
        "num_image_embeds",
        "num_text_embeds",
        "max_text_len",
    }
    nested = {
        "net": {k: v for k, v in config.items() if k in network_keys},
        **{k: v for k, v in config.items() if k not in network_keys},
    }
    path = tmp_path / "prior.pth"
    altered = {**state, "noise_scheduler.p2_loss_weight": torch.full((1000,), 2.0)}
    torch.save(altered, path)
    (tmp_path / "prior.json").write_text(json.dumps({"prior": nested}))
    prior = load_prior(path, device="cpu")
    assert_matches_reference(prior, data)  # p2 weights are not used by the loss
    assert torch.equal(prior.noise_scheduler.p2_loss_weight, torch.full((1000,), 2.0))
    assert "differs from the config" in caplog.text
    without_steps = {k: v for k, v in config.items() if k != "num_timesteps"}
    with pytest.raises(InputError, match="needs num_timesteps"):
        load_prior(path, config=without_steps)
