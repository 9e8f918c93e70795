import numpy as np
import pytest
import torch
from PIL import Image

from geovario.backbones import ClipBackbone, Preprocess
from geovario.errors import GeovarioError
from geovario.images import load_rgb


def _clip_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor()  # without torchvision this is transformers' PIL implementation


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (224, 224), (100, 60), (1000, 223), (301, 1207)])
def test_preprocess_matches_transformers_clip_processor(size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = Preprocess()(image)
    theirs = _clip_processor()(images=image, return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 224, 224)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_preprocess_matches_on_real_photos(fixtures_dir):
    photos = sorted((fixtures_dir / "osv5m-images").glob("*.jpg"))[:4] + [fixtures_dir / "exif-gps" / "DSCN0010.jpg"]
    for path in photos:
        image = load_rgb(path, exif_transpose=False)
        theirs = _clip_processor()(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(Preprocess()(image), theirs, atol=1e-5, err_msg=str(path))


def test_tiny_clip_loads_through_transformers_and_matches_get_image_features(tiny_clip_dir):
    from transformers import CLIPModel

    backbone = ClipBackbone.load(str(tiny_clip_dir), device="cpu")
    assert backbone.feature_dim == 32
    pixels = torch.randn(3, 3, 224, 224)
    ours = backbone.encode_pixels(pixels)
    full = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    with torch.no_grad():
        out = full.get_image_features(pixel_values=pixels)
    expected = out if isinstance(out, torch.Tensor) else out.pooler_output
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_backbone_reads_preprocessor_config(tiny_clip_dir, tmp_path):
    import shutil

    from transformers import CLIPImageProcessor

    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, folder)
    CLIPImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(folder)
    backbone = ClipBackbone.load(str(folder), device="cpu")
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5) and backbone.preprocess.std == (0.25, 0.25, 0.25)


def test_encode_real_photos_in_batches(tiny_clip_dir, fixtures_dir):
    backbone = ClipBackbone.load(str(tiny_clip_dir), device="cpu")
    paths = sorted((fixtures_dir / "exif-gps").glob("*.jpg"))
    features = backbone.encode_paths(paths, batch_size=4)
    assert features.shape == (len(paths), 32) and torch.isfinite(features).all()
    one_by_one = torch.cat([backbone.encode_paths([p]) for p in paths[:3]])
    torch.testing.assert_close(features[:3], one_by_one, rtol=1e-4, atol=1e-5)


def test_bad_backbone_names_give_one_line(tmp_path):
    with pytest.raises(GeovarioError, match="no config.json"):
        ClipBackbone.load(str(tmp_path))
    with pytest.raises(GeovarioError, match="cannot load backbone"):
        ClipBackbone.load("not here!")  # neither a folder nor a valid hub id; refused without a network call
    with pytest.raises(GeovarioError, match=r"nor-on-the-hub: backbone folder not found \(and not a hub id"):
        ClipBackbone.load(str(tmp_path / "not-here" / "nor-on-the-hub"))


def test_load_rgb_errors(tmp_path, fixtures_dir):
    with pytest.raises(GeovarioError, match="file not found"):
        load_rgb(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(GeovarioError, match="notes.jpg: not an image"):
        load_rgb(text)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes((fixtures_dir / "exif-gps" / "DSCN0010.jpg").read_bytes()[:5000])
    with pytest.raises(GeovarioError, match="cut.jpg: corrupt or truncated"):
        load_rgb(truncated)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(GeovarioError, match="empty.jpg: not an image"):
        load_rgb(empty)
    with pytest.raises(GeovarioError, match="is a directory"):
        load_rgb(tmp_path)
    # A valid photo with an unusual GPS IFD still decodes.
    assert load_rgb(fixtures_dir / "exif-gps" / "45-gps_ifd.jpg").size == (1600, 900)
    # CMYK and palette images come back as RGB.
    Image.new("CMYK", (30, 20)).save(tmp_path / "cmyk.jpg")
    assert load_rgb(tmp_path / "cmyk.jpg").mode == "RGB"


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (400, 400)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(GeovarioError, match="big.png: refused, too many pixels"):
        load_rgb(tmp_path / "big.png")


def _hub_cache(root, name, checkpoint):
    """A Hugging Face hub cache holding ``checkpoint`` as the hub id ``name`` (the layout huggingface_hub writes)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / f"models--{name.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.mark.parametrize("env, reason", [
    ({"HF_HUB_OFFLINE": "1"}, "the Hugging Face hub is switched off (HF_HUB_OFFLINE)"),
    ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "the Hugging Face hub is unreachable at http://127.0.0.1:9"),
])
def test_without_the_hub_a_cached_backbone_loads_and_a_missing_one_names_backbone_dir(tmp_path, tiny_clip_text_dir, env, reason):
    import os
    import subprocess
    import sys

    from test_data_readers import jpeg

    home = _hub_cache(tmp_path / "hf", "test/tiny-clip", tiny_clip_text_dir)
    environment = {**os.environ, "HF_HOME": str(home), **env}
    if "HF_HUB_OFFLINE" not in env:  # the unreachable case must not be rescued by an offline switch set outside
        environment.pop("HF_HUB_OFFLINE", None)
        environment.pop("TRANSFORMERS_OFFLINE", None)
    loads = subprocess.run([sys.executable, "-c", "from geovario.backbones import ClipBackbone, ClipTextTower; "
                            "print(ClipBackbone.load('test/tiny-clip', 'cpu').feature_dim, "
                            "ClipTextTower.load('test/tiny-clip', 'cpu').encode_texts(['a street']).shape[1])"],
                           env=environment, capture_output=True, text=True)
    assert loads.returncode == 0 and loads.stdout.split() == ["32", "32"], loads.stderr[-800:]
    from conftest import random_gallery, tiny_config

    from geovario.model import GeoLocModel
    from geovario.modeldir import save_model_dir

    model = save_model_dir(tmp_path / "model", GeoLocModel(tiny_config()), backbone="openai/clip-vit-large-patch14", gallery=random_gallery(20))
    failed = subprocess.run([sys.executable, "-m", "geovario", "predict", "--model", str(model), "--image", str(jpeg(tmp_path / "p.jpg")),
                             "--no-progress"], env=environment, capture_output=True, text=True)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and len(lines) == 1, failed.stderr[-800:]
    assert reason in lines[0] and "not in the local cache" in lines[0] and "pass --backbone DIR" in lines[0]


def test_the_cuda_only_float16_extraction_runs_on_cpu_when_forced(tiny_clip_dir, monkeypatch):
    """Extraction runs the frozen backbone under float16 autocast on CUDA only (HALF_PRECISION_DEVICES). Forced on
    CPU, where torch.autocast("cpu") takes float16 too, the branch must give finite float32 features close to the
    float32 ones, and not the same bits (else autocast did not engage). Pinned batches move with non_blocking; CPU
    tensors are never pinned here, so the synchronous copy is what runs."""
    from geovario import backbones

    backbone = ClipBackbone.load(str(tiny_clip_dir), "cpu")
    pixels = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3, 224, 224)).astype(np.float32))
    full = backbone.encode_pixels(pixels)
    monkeypatch.setattr(backbones, "HALF_PRECISION_DEVICES", ("cuda", "cpu"))
    half = backbone.encode_pixels(pixels)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert not torch.equal(half, full)
    np.testing.assert_allclose(half.numpy(), full.numpy(), rtol=0.05, atol=0.02 * float(full.abs().max()))
