"""The one-line API: geovario.load(...).predict(...) gives what the Predictor gives, for paths, PIL images and arrays,
and never drops an unreadable image silently."""

import numpy as np
import pytest
from PIL import Image, ImageOps

import geovario
from geovario.confidence import Prediction
from geovario.errors import GeovarioError
from geovario.predict import Predictor


def same(a, b):
    """The same places with the same probabilities, up to float32 noise: images encoded in batches of other sizes."""
    return ([p.gallery_index for p in a] == [p.gallery_index for p in b]
            and [p.prob for p in a] == pytest.approx([p.prob for p in b], rel=1e-5))


def test_a_path_a_pil_image_and_an_array_give_the_predictors_places(tiny_model_dir, tiny_clip_dir, fixtures_dir):
    photo = fixtures_dir / "exif-gps" / "DSCN0010.jpg"
    g = geovario.load(tiny_model_dir, backbone=str(tiny_clip_dir))
    expected = Predictor(tiny_model_dir, progress=False).predict_images(str(photo), top_k=3, backbone=str(tiny_clip_dir))
    upright = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
    for image in (photo, str(photo), Image.open(photo), np.asarray(upright)):
        places = g.predict(image, top_k=3)
        assert len(places) == 3 and all(isinstance(p, Prediction) for p in places) and same(places, expected)
    several = g.predict([str(photo), upright, fixtures_dir / "exif-gps" / "DSCN0012.jpg"], top_k=2)
    assert len(several) == 3 and same(several[0], expected[:2]) and same(several[1], expected[:2])
    assert not same(several[2], several[0])  # another photo, other places
    features = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    assert all(same(a, b) for a, b in zip(g.predict_features(features), Predictor(tiny_model_dir, progress=False).predict_features(features)))


def test_an_unreadable_image_raises_by_name_or_is_reported_in_its_place(tiny_model_dir, tiny_clip_dir, fixtures_dir, tmp_path):
    photo = fixtures_dir / "exif-gps" / "DSCN0010.jpg"
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    g = geovario.load(tiny_model_dir, backbone=str(tiny_clip_dir))
    with pytest.raises(GeovarioError, match="notes.txt: not an image"):
        g.predict([photo, text])
    with pytest.raises(GeovarioError, match=r"images\[1\]: an image array must be .* got \(8, 8, 3\) float64"):
        g.predict([photo, np.zeros((8, 8, 3))])
    reported = g.predict([text, photo, np.zeros((8, 8, 3)), 42], errors="report")
    assert "not an image" in reported[0] and "uint8" in reported[2] and "got int" in reported[3]
    assert len(reported[1]) == 5 and all(isinstance(p, Prediction) for p in reported[1])
    with pytest.raises(ValueError, match="errors must be"):
        g.predict(photo, errors="ignore")


def test_load_geoclip_converts_the_release_once_into_the_user_cache(tmp_path, monkeypatch, geoclip_wheel):
    from geovario.interop import geoclip

    monkeypatch.setenv("GEOVARIO_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(geoclip, "find_release", lambda: calls.append(1) or geoclip.read_release_wheel(geoclip_wheel))
    first = geovario.load("geoclip")
    assert first.predictor.model_dir == tmp_path / "cache" / "models" / "geoclip-1.3.0" and len(first.predictor.gallery) == 100_000
    second = geovario.load("geoclip")
    assert calls == [1] and second.predictor.weights_sha256 == first.predictor.weights_sha256  # converted once


def test_arrays_of_every_image_shape_and_a_missing_model_directory(tiny_model_dir, tiny_clip_dir, tmp_path):
    """Grey (H, W), RGB and RGBA uint8 arrays are images; other shapes, an empty side or another dtype are refused
    by position. A model path that is not there is refused by name: only "geoclip" itself fetches GeoCLIP."""
    g = geovario.load(tiny_model_dir, backbone=str(tiny_clip_dir))
    rng = np.random.default_rng(4)
    for shape in ((40, 30), (40, 30, 3), (40, 30, 4), (1, 1), (1, 1, 3)):
        assert len(g.predict(rng.integers(0, 256, shape, dtype=np.uint8), top_k=2)) == 2
    for bad in (np.zeros((40, 30, 2), np.uint8), np.zeros((40, 30, 5), np.uint8), np.zeros((0, 30, 3), np.uint8),
                np.zeros((40, 0), np.uint8), np.zeros((2, 40, 30, 3), np.uint8), np.zeros((40,), np.uint8),
                np.zeros((40, 30, 3), np.uint16)):
        with pytest.raises(GeovarioError, match=r"images\[1\]: an image array must be"):
            g.predict([rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), bad])
    with pytest.raises(GeovarioError, match="no-such-model"):
        geovario.load(tmp_path / "no-such-model")


def test_text_queries_through_the_api(tiny_model_dir, tiny_clip_text_dir):
    g = geovario.load(tiny_model_dir, backbone=str(tiny_clip_text_dir))
    expected = Predictor(tiny_model_dir, progress=False).predict_texts(["a snowy street", "a beach"], top_k=3,
                                                                        backbone=str(tiny_clip_text_dir))
    one = g.predict_text("a snowy street", top_k=3)
    assert all(isinstance(p, Prediction) for p in one) and same(one, expected[0])
    both = g.predict_text(["a snowy street", "a beach"], top_k=3)
    assert len(both) == 2 and same(both[0], expected[0]) and same(both[1], expected[1])
