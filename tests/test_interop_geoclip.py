import shutil
import zipfile

import numpy as np
import pytest
import torch

from geovario.cli import main
from geovario.errors import GeovarioError
from geovario.interop.geoclip import (
    PACKAGE_PATHS,
    read_release_folder,
    read_release_wheel,
    reference_geoclip,
    unpack_wheel,
    write_geoclip_model_dir,
)
from geovario.modeldir import load_model_dir, read_gallery
from geovario.predict import Predictor


def test_convert_from_release_folder(tmp_path, geoclip_reference_dir):
    out = write_geoclip_model_dir(tmp_path / "geoclip", read_release_folder(geoclip_reference_dir))
    loaded = load_model_dir(out)
    assert loaded.backbone == "openai/clip-vit-large-patch14"
    assert float(loaded.model.logit_scale.detach()) == pytest.approx(3.681, abs=1e-4)  # exp = 39.69
    assert (out / "gallery.csv").read_bytes() == (geoclip_reference_dir / "coordinates_100K.csv").read_bytes()
    original = torch.load(geoclip_reference_dir / "location_encoder_weights.pth", weights_only=True)
    state = loaded.model.state_dict()
    torch.testing.assert_close(state["location_encoder.branches.2.rff.b"], original["LocEnc2.capsule.0.b"], rtol=0, atol=0)
    torch.testing.assert_close(state["location_encoder.branches.1.mlp.4.weight"], original["LocEnc1.capsule.5.weight"], rtol=0, atol=0)
    torch.testing.assert_close(state["location_encoder.branches.0.head.bias"], original["LocEnc0.head.0.bias"], rtol=0, atol=0)


def test_modified_release_file_is_refused(tmp_path, geoclip_reference_dir):
    copy = tmp_path / "release"
    shutil.copytree(geoclip_reference_dir, copy)
    data = bytearray((copy / "image_encoder_mlp_weights.pth").read_bytes())
    data[-300] ^= 1
    (copy / "image_encoder_mlp_weights.pth").write_bytes(bytes(data))
    with pytest.raises(GeovarioError, match="image_encoder_mlp_weights.pth has sha256 .* refusing"):
        read_release_folder(copy)
    (copy / "coordinates_100K.csv").unlink()
    with pytest.raises(GeovarioError, match="coordinates_100K.csv not found"):
        read_release_folder(copy)


def test_wheel_source_and_package_layout(tmp_path, geoclip_reference_dir):
    wheel = tmp_path / "geoclip-1.3.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, package_path in PACKAGE_PATHS.items():
            archive.write(geoclip_reference_dir / name, f"geoclip/{package_path}")
    assert read_release_wheel(wheel).files.keys() == PACKAGE_PATHS.keys()
    package = unpack_wheel(wheel, tmp_path / "site") / "geoclip"
    assert read_release_folder(package).source == str(package)
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(GeovarioError, match="not a readable wheel"):
        read_release_wheel(tmp_path / "bad.whl")


def test_installed_package_is_found_without_importing_it(tmp_path, geoclip_reference_dir, monkeypatch):
    from geovario.interop.geoclip import find_release

    package = tmp_path / "site" / "geoclip"
    for name, package_path in PACKAGE_PATHS.items():
        (package / package_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(geoclip_reference_dir / name, package / package_path)
    (package / "__init__.py").write_text("raise ImportError('importing geoclip would need torchvision')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    release = find_release()
    assert release.source == str(package) and len(release.files) == 4


@pytest.mark.slow
def test_parity_with_geoclip_1_3_0_modules(tmp_path, geoclip_wheel):
    """Logits within 1e-4 and the same top-5 as GeoCLIP's own code, for 64 features on the 100K gallery."""
    site = unpack_wheel(geoclip_wheel, tmp_path / "site")
    theirs_model = reference_geoclip(site)
    out = write_geoclip_model_dir(tmp_path / "geoclip", read_release_wheel(geoclip_wheel))
    predictor = Predictor(out, device="cpu", progress=False)
    features = np.random.default_rng(0).normal(size=(64, 768)).astype(np.float32)

    with torch.no_grad():
        theirs = theirs_model(torch.from_numpy(features), theirs_model.gps_gallery)
        ours = predictor.logit_scale * (
            predictor.model.encode_images(torch.from_numpy(features)) @ torch.from_numpy(np.asarray(predictor.gallery_embeddings)).T
        )
    assert torch.equal(theirs_model.gps_gallery, torch.from_numpy(read_gallery(out / "gallery.csv")))
    assert (ours - theirs).abs().max().item() <= 1e-4

    their_top = torch.topk(theirs.softmax(dim=-1), 5, dim=1)
    predictions = predictor.predict_features(features, top_k=5, pool_km=None)  # GeoCLIP's top-k: gallery points, unpooled
    our_index = np.array([[p.gallery_index for p in row] for row in predictions])
    our_prob = np.array([[p.prob for p in row] for row in predictions])
    their_index = their_top.indices.numpy()
    np.testing.assert_allclose(our_prob, their_top.values.numpy(), atol=1e-6)
    # The gallery repeats some coordinates (94,123 unique of 100K); such rows have bit-equal logits,
    # and torch.topk orders them arbitrarily while geovario orders them by index. Any difference
    # must be exactly such a tie.
    differ = our_index != their_index
    rows = np.nonzero(differ)[0]
    assert torch.equal(theirs[rows, our_index[differ]], theirs[rows, their_index[differ]])
    # So the predicted locations are the same, in the same order, for every input.
    np.testing.assert_array_equal(predictor.gallery[our_index], predictor.gallery[their_index])


@pytest.mark.slow
def test_embed_gps_equals_geoclip_location_encoder_on_the_100k_gallery(tmp_path, geoclip_wheel, capsys):
    theirs_model = reference_geoclip(unpack_wheel(geoclip_wheel, tmp_path / "site"))
    out = write_geoclip_model_dir(tmp_path / "geoclip", read_release_wheel(geoclip_wheel))
    assert main(["embed-gps", "--model", str(out), "--csv", str(out / "gallery.csv"), "--out", str(tmp_path / "e.npy"),
                 "--no-progress", "--device", "cpu"]) == 0, capsys.readouterr().err
    with torch.no_grad():
        theirs = theirs_model.location_encoder(theirs_model.gps_gallery).numpy()
    ours = np.load(tmp_path / "e.npy")
    assert ours.shape == theirs.shape == (100_000, 512)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_export_gives_back_the_release_state_dicts(tmp_path, geoclip_reference_dir, capsys):
    model_dir = write_geoclip_model_dir(tmp_path / "geoclip", read_release_folder(geoclip_reference_dir))
    assert main(["weights", "export-geoclip", "--model", str(model_dir), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    for name in ("location_encoder_weights.pth", "image_encoder_mlp_weights.pth", "logit_scale_weights.pth"):
        released = torch.load(geoclip_reference_dir / name, weights_only=True)
        exported = torch.load(tmp_path / "out" / name, weights_only=True)
        if isinstance(released, dict):
            assert list(exported) == list(released), name
            assert all(torch.equal(exported[k], released[k]) for k in released), name
        else:
            assert exported.shape == released.shape and torch.equal(exported, released)
    assert (tmp_path / "out" / "coordinates_100K.csv").read_bytes() == (geoclip_reference_dir / "coordinates_100K.csv").read_bytes()


def test_exported_weights_in_geoclips_own_modules_give_geovarios_logits(tmp_path, geoclip_wheel, capsys):
    """A model geovario trained (here: random, GeoCLIP's shapes) runs unchanged in GeoCLIP 1.3.0's code."""
    from geovario.model import GeoLocModel, ModelConfig
    from geovario.modeldir import save_model_dir

    torch.manual_seed(3)
    model = GeoLocModel(ModelConfig()).eval()
    gallery = np.stack([np.random.default_rng(0).uniform(-80, 80, 1000), np.random.default_rng(1).uniform(-180, 180, 1000)], 1)
    model_dir = save_model_dir(tmp_path / "ours", model, gallery=gallery)
    assert main(["weights", "export-geoclip", "--model", str(model_dir), "--out", str(tmp_path / "export")]) == 0
    capsys.readouterr()
    theirs = reference_geoclip(unpack_wheel(geoclip_wheel, tmp_path / "site"))
    theirs.weights_folder = str(tmp_path / "export")
    theirs._load_weights()  # GeoCLIP's own loader, weights_only=True
    load_gps_data = type(theirs).__init__.__globals__["load_gps_data"]  # GeoCLIP's own gallery reader
    their_gallery = load_gps_data(str(tmp_path / "export" / "coordinates_100K.csv"))
    features = torch.from_numpy(np.random.default_rng(2).normal(size=(16, 768)).astype(np.float32))
    with torch.no_grad():
        expected = model(features, torch.from_numpy(gallery).float())
        got = theirs(features, their_gallery)
    assert (got - expected).abs().max().item() <= 1e-5


def test_the_hub_layout_loads_with_geoclips_own_from_pretrained(tmp_path, geoclip_wheel, capsys):
    """export-geoclip --layout hub, read back by GeoCLIP 1.3.0's GeoCLIP.from_pretrained (its config and key checks,
    its safetensors and gallery readers). Only what needs the hub is stood in for: the CLIP backbone it downloads by
    repo id, replaced by a pass-through taking features, as in the parity test."""
    import json
    import types

    from geovario.interop.geoclip import _FeaturesPassThrough, geoclip_package
    from geovario.model import GeoLocModel, ModelConfig
    from geovario.modeldir import save_model_dir

    torch.manual_seed(4)
    model = GeoLocModel(ModelConfig()).eval()
    gallery = np.stack([np.random.default_rng(0).uniform(-80, 80, 500), np.random.default_rng(1).uniform(-180, 180, 500)], 1)
    model_dir = save_model_dir(tmp_path / "ours", model, gallery=gallery)
    assert main(["weights", "export-geoclip", "--model", str(model_dir), "--out", str(tmp_path / "hub"), "--layout", "hub"]) == 0
    assert "GeoCLIP.from_pretrained" in capsys.readouterr().out
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["backbone"]["repo_id"] == "openai/clip-vit-large-patch14" and config["sigma"] == [1.0, 16.0, 256.0]
    with geoclip_package(unpack_wheel(geoclip_wheel, tmp_path / "site")) as import_module:
        image_encoder = import_module("geoclip.model.image_encoder")
        image_encoder.CLIPModel = types.SimpleNamespace(from_pretrained=lambda path: _FeaturesPassThrough())
        image_encoder.AutoProcessor = types.SimpleNamespace(from_pretrained=lambda path: None)
        import_module("geoclip.model._hub").download_backbone = lambda config, **options: "the CLIP backbone"
        theirs = import_module("geoclip.model.GeoCLIP").GeoCLIP.from_pretrained(str(tmp_path / "hub"))
    features = torch.from_numpy(np.random.default_rng(2).normal(size=(8, 768)).astype(np.float32))
    with torch.no_grad():
        expected = model(features, torch.from_numpy(gallery).float())
        got = theirs(features, theirs.gps_gallery)
    assert np.allclose(theirs.gps_gallery.numpy(), gallery, atol=1e-5)
    assert (got - expected).abs().max().item() <= 1e-5


def test_export_refuses_other_architectures(tmp_path, tiny_model_dir, capsys):
    code = main(["weights", "export-geoclip", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cannot be exported to GeoCLIP: its feature_dim is 32, GeoCLIP's modules are built with 768" in err[0]
    assert not (tmp_path / "x").exists()
