"""Ten-crop test-time augmentation: the crops against PIL's own crop and mirror, the logits of the views averaged
before the softmax (as GeoCLIP's authors do), and the option through the API, the command and the folder journal."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import geovario
from geovario.backbones import CLIP_MEAN, CLIP_STD, ClipBackbone, Preprocess
from geovario.errors import GeovarioError
from geovario.predict import Predictor


def by_hand(image: Image.Image) -> np.ndarray:
    """(3, 224, 224) CLIP-normalised pixels of a PIL image already at 224 x 224."""
    array = np.asarray(image, dtype=np.float64) / 255
    return ((array - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [(300, 400), (640, 256), (256, 256)])
def test_ten_crops_are_the_corners_centre_and_their_mirrors_of_the_image_resized_to_256(size):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    crops = Preprocess().ten_crop(image)
    assert crops.shape == (10, 3, 224, 224) and crops.dtype == np.float32
    width, height = size
    resized = image.resize((256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256),
                           Image.Resampling.BICUBIC)
    w, h = resized.size
    boxes = [(0, 0), (w - 224, 0), (0, h - 224), (w - 224, h - 224), ((w - 224) // 2, (h - 224) // 2)]
    expected = [resized.crop((left, top, left + 224, top + 224)) for left, top in boxes]
    expected += [ImageOps.mirror(crop) for crop in expected]
    for got, want in zip(crops, expected):
        np.testing.assert_allclose(got, by_hand(want), atol=1e-5)
    assert not np.allclose(crops[0], crops[5])  # a mirror image is another view


def test_views_of_a_photo_average_their_logits_before_the_softmax(tiny_model_dir):
    predictor = Predictor(tiny_model_dir, progress=False)
    rng = np.random.default_rng(1)
    views = (2 * rng.normal(size=(3, 4, 32))).astype(np.float32)
    with torch.no_grad():
        images = F.normalize(predictor.model.encode_images(torch.from_numpy(views.reshape(-1, 32))), dim=-1).double()
        places = F.normalize(predictor.model.encode_locations(torch.from_numpy(predictor.gallery)), dim=-1).double()
    logits = (predictor.logit_scale * images @ places.T).reshape(3, 4, -1).mean(dim=1)
    expected = torch.softmax(logits, dim=1).numpy()
    for row, places_of_photo in enumerate(predictor.predict_features(views, top_k=1, pool_km=None)):
        best = places_of_photo[0]
        assert best.gallery_index == int(np.argmax(expected[row])) and best.prob == pytest.approx(expected[row].max(), rel=1e-4)
    # Averaging probabilities instead would be another answer: the test above tells the two apart on these views.
    mean_of_softmax = torch.softmax(predictor.logit_scale * images @ places.T, dim=1).reshape(3, 4, -1).mean(dim=1).numpy()
    assert not np.allclose(mean_of_softmax.max(axis=1), expected.max(axis=1), rtol=1e-3)
    one_view = predictor.predict_features(views[:, :1], top_k=2)
    assert [[p.prob for p in r] for r in one_view] == [[p.prob for p in r] for r in predictor.predict_features(views[:, 0], top_k=2)]
    with pytest.raises(GeovarioError, match="row 5 contains NaN"):
        bad = views.copy()
        bad[1, 1, 0] = np.nan
        predictor.predict_features(bad)


def test_ten_crop_through_the_api_the_command_and_the_folder_journal(tiny_model_dir, tiny_clip_dir, fixtures_dir, tmp_path, capsys,
                                                                  monkeypatch):
    from geovario.cli import main

    photo = fixtures_dir / "exif-gps" / "DSCN0010.jpg"
    backbone = ClipBackbone.load(str(tiny_clip_dir), "cpu")
    upright = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
    with torch.no_grad():
        crops = backbone.encode_pixels(torch.from_numpy(backbone.preprocess.ten_crop(upright))).numpy()
    expected = Predictor(tiny_model_dir, progress=False).predict_features(crops[None], top_k=3)[0]
    g = geovario.load(tiny_model_dir, backbone=str(tiny_clip_dir))
    for image in (photo, upright):
        got = g.predict(image, top_k=3, tta="ten-crop")
        assert [p.gallery_index for p in got] == [p.gallery_index for p in expected]
        assert [p.prob for p in got] == pytest.approx([p.prob for p in expected], rel=1e-4)
    plain = g.predict(photo, top_k=3)
    assert [p.prob for p in plain] != pytest.approx([p.prob for p in expected], rel=1e-4)
    with pytest.raises(GeovarioError, match="test-time augmentation 'five-crop'"):
        g.predict(upright, tta="five-crop")

    args = ["predict", "--model", str(tiny_model_dir), "--backbone", str(tiny_clip_dir), "--top-k", "3", "--json", "--no-progress"]
    assert main(args + ["--image", str(photo), "--tta", "ten-crop"]) == 0
    printed = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert [p["prob"] for p in printed] == pytest.approx([p.prob for p in expected], rel=1e-4)
    heat = tmp_path / "heat.png"
    assert main(args + ["--image", str(photo), "--tta", "ten-crop", "--heatmap", str(heat)]) == 0
    assert [p["prob"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]] == pytest.approx([p.prob for p in expected], rel=1e-4)
    assert heat.stat().st_size > 10_000
    np.save(tmp_path / "f.npy", np.zeros((2, 32), np.float32))
    assert main(args + ["--features", str(tmp_path / "f.npy"), "--tta", "ten-crop"]) == 1
    assert "--tta crops images: it goes with --image" in capsys.readouterr().err

    folder, out = fixtures_dir / "exif-gps", tmp_path / "places.jsonl"
    from geovario import predict_folder as folder_module

    def cut_short(*_):
        raise KeyboardInterrupt  # killed once every photo is in the journal, before the output is written

    monkeypatch.setattr(folder_module, "_render", cut_short)
    with pytest.raises(KeyboardInterrupt):
        folder_module.predict_folder(Predictor(tiny_model_dir, progress=False), folder, out, top_k=3, backbone=str(tiny_clip_dir),
                                     progress=False)
    monkeypatch.undo()
    assert main(args[:-2] + ["--image", str(folder), "--out", str(out), "--resume", "--tta", "ten-crop", "--no-progress"]) == 1
    assert "made with other settings (tta differ)" in capsys.readouterr().err
    out.with_name(out.name + ".partial.jsonl").unlink()
    assert main(args[:-2] + ["--image", str(folder), "--out", str(out), "--tta", "ten-crop", "--no-progress"]) in (0, 1)
    record = next(json.loads(line) for line in out.read_text().splitlines() if json.loads(line)["input"] == str(photo))
    assert [p["prob"] for p in record["predictions"]] == pytest.approx([p.prob for p in expected], rel=1e-4)
