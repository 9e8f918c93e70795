import pytest
import torch

from conftest import tiny_config
from geovario.model import GeoLocModel, ModelConfig


def test_default_shapes_hold_geoclips_released_weights_exactly(geoclip_reference_dir):
    """ModelConfig() is GeoCLIP 1.3.0: its state dict has the shapes of the released .pth files, key for key."""
    from geovario.interop.geoclip import convert_state_dicts

    def load(name):
        return torch.load(geoclip_reference_dir / name, weights_only=True)

    released = convert_state_dicts(load("location_encoder_weights.pth"), load("image_encoder_mlp_weights.pth"),
                                   load("logit_scale_weights.pth"))
    model = GeoLocModel()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in released.items()}
    # The state dict is the learned weights and the fixed RFF matrices, nothing else (no training queue).
    assert set(shapes) == {n for n, _ in model.named_parameters()} | {f"location_encoder.branches.{i}.rff.b" for i in range(3)}
    assert [b.rff.sigma for b in model.location_encoder.branches] == [1.0, 16.0, 256.0]
    for i, sigma in enumerate([1.0, 16.0, 256.0]):  # GeoCLIP's B ~ N(0, sigma^2)
        assert float(released[f"location_encoder.branches.{i}.rff.b"].std()) == pytest.approx(sigma, rel=0.15)


def test_forward_is_scaled_cosine_and_trains():
    torch.manual_seed(0)
    model = GeoLocModel(tiny_config(feature_dim=24))
    features, gps = torch.randn(5, 24), torch.tensor([[0.0, 0.0], [45.0, 90.0], [-30.0, -60.0]])
    logits = model(features, gps)
    assert logits.shape == (5, 3)
    assert logits.abs().max() <= model.logit_scale.exp() + 1e-5
    cos = torch.nn.functional.cosine_similarity(model.image_head(features)[:, None], model.location_encoder(gps)[None], dim=-1)
    torch.testing.assert_close(logits, model.logit_scale.exp() * cos, rtol=1e-5, atol=1e-5)
    logits.logsumexp(1).mean().backward()
    assert model.image_head.mlp[0].weight.grad is not None
    assert model.location_encoder.branches[1].mlp[0].weight.grad is not None
    assert model.location_encoder.branches[0].rff.b.requires_grad is False


def test_config_roundtrip_ignores_unknown_keys():
    config = tiny_config()
    assert ModelConfig.from_dict({**config.to_dict(), "future_option": 1}) == config


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fourier_features_stay_float32_under_autocast(dtype):
    """At sigma = 2^8 the phases reach thousands of radians; in bfloat16 (or float16) they would be rounded by whole
    radians. Under autocast the encoding must be the float32 one, bit for bit, and the encoder close to float32."""
    from geovario.model import GeoLocModel, ModelConfig, RandomFourierFeatures

    torch.manual_seed(0)
    rff = RandomFourierFeatures(2.0**8)
    v = torch.rand(500, 2) * 2 - 1
    plain = rff(v)
    with torch.autocast("cpu", dtype=dtype):
        mixed = rff(v)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    model = GeoLocModel(ModelConfig(hidden_dim=64, rff_dim=32))
    latlon = torch.stack([torch.rand(300) * 170 - 85, torch.rand(300) * 360 - 180], 1)
    full = model.encode_locations(latlon)
    with torch.autocast("cpu", dtype=dtype):
        reduced = model.encode_locations(latlon).float()
    assert torch.nn.functional.cosine_similarity(full, reduced, dim=1).min() > 0.99
