import numpy as np
import pytest
import torch

from conftest import tiny_config
from geovario.model import GeoLocModel, ModelConfig, NegativeQueue


def test_default_config_is_geoclip_shapes():
    model = GeoLocModel()
    shapes = {k: tuple(v.shape) for k, v in model.weights_state_dict().items()}
    assert len(model.location_encoder.branches) == 3
    assert [b.rff.sigma for b in model.location_encoder.branches] == [1.0, 16.0, 256.0]
    assert shapes["location_encoder.branches.0.rff.b"] == (256, 2)
    assert shapes["location_encoder.branches.2.mlp.0.weight"] == (1024, 512)
    assert shapes["location_encoder.branches.2.mlp.4.weight"] == (1024, 1024)
    assert shapes["location_encoder.branches.1.head.weight"] == (512, 1024)
    assert shapes["image_head.mlp.0.weight"] == (768, 768)
    assert shapes["image_head.mlp.2.weight"] == (512, 768)
    assert model.queue.size == 4096
    assert not any(k.startswith("queue.") for k in model.weights_state_dict())


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


def _reference_queue(chunks, size):
    """What a queue of ``size`` must hold: the last ``size`` rows ever enqueued, as a set of ids."""
    seen = np.concatenate(chunks) if chunks else np.zeros(0)
    return set(seen[-size:].tolist())


@pytest.mark.parametrize("batch_sizes", [[3] * 10, [7, 1, 16, 5, 2, 9], [20], [13, 13, 13], [16, 16, 16, 16, 1]])
def test_queue_wraps_for_any_batch_size(batch_sizes):
    size = 16
    queue = NegativeQueue(size, feature_dim=3)
    chunks, next_id, expected_ptr = [], 0, 0
    for n in batch_sizes:
        ids = np.arange(next_id, next_id + n, dtype=np.float32)
        next_id += n
        gps = torch.from_numpy(np.stack([ids, -ids], 1))
        features = torch.from_numpy(np.stack([ids, ids * 2, ids * 3], 1))
        queue.enqueue(gps, features)
        chunks.append(ids)
        gps_rows, feature_rows = queue.filled()
        assert len(gps_rows) == min(size, next_id)
        assert set(gps_rows[:, 0].tolist()) == _reference_queue(chunks, size)
        # The feature queue stays row-aligned with the GPS queue.
        torch.testing.assert_close(feature_rows[:, 0], gps_rows[:, 0])
        torch.testing.assert_close(feature_rows[:, 2], 3 * gps_rows[:, 0])
        torch.testing.assert_close(gps_rows[:, 1], -gps_rows[:, 0])
        # GeoCLIP's pointer rule: advance by n, or restart at 0 after a batch as large as the queue.
        expected_ptr = 0 if n >= size else (expected_ptr + n) % size
        assert int(queue.ptr) == expected_ptr


def test_queue_pointer_matches_geoclip_ring_buffer():
    queue = NegativeQueue(10, feature_dim=1)
    for n in [4, 4, 4]:
        queue.enqueue(torch.zeros(n, 2))
    assert int(queue.ptr) == 2 and int(queue.count) == 10
    queue.enqueue(torch.zeros(25, 2))  # larger than the queue: keeps the tail, pointer back to 0
    assert int(queue.ptr) == 0
    with pytest.raises(ValueError, match="3 GPS rows but 2 feature rows"):
        queue.enqueue(torch.zeros(3, 2), torch.zeros(2, 1))


def test_config_roundtrip_ignores_unknown_keys():
    config = tiny_config()
    assert ModelConfig.from_dict({**config.to_dict(), "future_option": 1}) == config
