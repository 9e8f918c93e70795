"""The Predictor's own refusals and conveniences: the row an overflowing feature is named by, top-k's bounds checked
before any work, the backbone loaded only for a readable image, texts checked before the text tower, tensors that
carry gradients, and two views averaged like ten."""

import numpy as np
import pytest
import torch

from geovario.errors import GeovarioError, ParameterError
from geovario.predict import Predictor


def test_an_overflowing_feature_row_is_named_with_its_largest_value(tiny_model_dir):
    predictor = Predictor(tiny_model_dir, progress=False)
    features = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    features[2] = -3e38  # float32's largest is 3.4e38: the head's sums overflow
    features[2, 0] = 1.0
    with pytest.raises(GeovarioError, match=r"features row 2: .*largest value is 3e\+38"):
        predictor.encode_queries(features)
    with pytest.raises(GeovarioError, match=r"features row 12: "):
        predictor.encode_queries(features, first_row=10)


def test_top_k_from_one_to_the_gallery_size_and_checked_before_any_image(tiny_model_dir, tmp_path):
    predictor = Predictor(tiny_model_dir, progress=False)
    features = np.random.default_rng(1).normal(size=(2, 32)).astype(np.float32)
    assert [len(p) for p in predictor.predict_features(features, top_k=1, pool_km=None)] == [1, 1]
    assert [len(p) for p in predictor.predict_features(features, top_k=300, pool_km=None)] == [300, 300]
    for bad in (0, 301):
        with pytest.raises(ParameterError, match="top_k"):
            predictor.predict_features(features, top_k=bad)
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    with pytest.raises(ParameterError, match="top_k"):  # even when no image is readable
        predictor.predict_images([str(text)], top_k=0, backbone=str(tmp_path / "no-such-clip"))


def test_the_backbone_loads_only_once_an_image_is_readable(tiny_model_dir, tmp_path):
    """Unreadable files only: their reasons come back, and the (here missing) backbone is never loaded."""
    predictor = Predictor(tiny_model_dir, progress=False)
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    found = predictor.predict_images([str(text), str(tmp_path / "gone.jpg")], backbone=str(tmp_path / "no-such-clip"))
    assert "not an image" in found[0] and "gone.jpg" in found[1]
    with pytest.raises(GeovarioError, match="no-such-clip"):  # a readable image needs it
        predictor.predict_images([str(text), _a_photo(tmp_path)], backbone=str(tmp_path / "no-such-clip"))


def _a_photo(folder) -> str:
    from PIL import Image

    path = folder / "photo.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_texts_are_checked_before_the_text_tower_loads(tiny_model_dir, tmp_path):
    predictor = Predictor(tiny_model_dir, progress=False)
    with pytest.raises(GeovarioError, match="empty"):
        predictor.predict_texts(["   "], backbone=str(tmp_path / "no-such-clip"))


def test_tensors_with_gradients_and_two_views(tiny_model_dir):
    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(3)
    features = torch.tensor(rng.normal(size=(3, 32)), dtype=torch.float32, requires_grad=True)
    from_tensor = predictor.predict_features(features, top_k=2)
    from_array = predictor.predict_features(features.detach().numpy(), top_k=2)
    assert [[p.prob for p in r] for r in from_tensor] == [[p.prob for p in r] for r in from_array]
    two = (2 * rng.normal(size=(2, 2, 32))).astype(np.float32)  # two views of two photos: their mean logits
    logits = predictor.logits(predictor.encode_queries(two.reshape(-1, 32))).reshape(2, 2, -1).mean(axis=1)
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    got = predictor.predict_features(two, top_k=1, pool_km=None)
    assert [r[0].gallery_index for r in got] == list(expected.argmax(axis=1))
    assert [r[0].prob for r in got] == pytest.approx(list(expected.max(axis=1)), rel=1e-6)


def test_a_predictor_for_a_model_in_memory_answers_as_one_loaded_from_its_directory(tiny_model_dir):
    """Training's validation builds its predictor from the model in memory (temperature 1, unit gallery
    embeddings): the same places and probabilities as the model directory's own predictor."""
    loaded = Predictor(tiny_model_dir, progress=False)
    in_memory = Predictor.from_model(loaded.model, loaded.gallery, "cpu")
    features = (2 * np.random.default_rng(5).normal(size=(4, 32))).astype(np.float32)
    for a, b in zip(in_memory.predict_features(features, top_k=3), loaded.predict_features(features, top_k=3)):
        assert [p.gallery_index for p in a] == [p.gallery_index for p in b]
        assert [p.prob for p in a] == pytest.approx([p.prob for p in b], rel=1e-5)
