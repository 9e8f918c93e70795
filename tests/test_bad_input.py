"""Bad input, command by command: one line that names the problem, a non-zero exit, never a traceback.

Each case runs the real command in-process (``geovario.cli.main``) on fixtures built once for the
session. It asserts the exit status (1: a problem the user can fix; 2: a usage error), that nothing
printed a traceback, that stderr holds exactly one line, and the key words of that line.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_gallery, tiny_config
from geovario.cli import main
from geovario.data.store import write_store
from geovario.model import GeoLocModel
from geovario.modeldir import save_model_dir
from test_data_readers import gps_exif, jpeg

BATCH = ["--set", "model.queue_size=64", "--set", "train.batch_size=16", "--set", "train.log_every=1"]
SMALL = BATCH + ["--set", "model.embed_dim=16", "--set", "model.hidden_dim=32", "--set", "model.rff_dim=16"]


def _store(folder, n=48, dim=32, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    latlon = np.stack([rng.uniform(-60, 60, n), rng.uniform(-170, 170, n)], 1)
    return write_store(folder, rng.normal(size=(n, dim)).astype(np.float32), latlon, dtype="float32", **kwargs).folder


def _model_dir(folder, **meta) -> Path:
    torch.manual_seed(0)
    return save_model_dir(folder, GeoLocModel(tiny_config()), backbone="unused", gallery=random_gallery(300), meta=meta or None)


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def F(tmp_path_factory, tiny_clip_dir) -> SimpleNamespace:
    """Every file the cases need, good and bad, made once."""
    root = tmp_path_factory.mktemp("bad-input")
    f = SimpleNamespace(root=root, clip=tiny_clip_dir)
    f.a_file = root / "a-file.txt"
    f.a_file.write_text("not a folder")

    # Model directories.
    f.model = _model_dir(root / "model")
    f.model_no_config = _copy(f.model, root / "model-no-config")
    (f.model_no_config / "config.json").unlink()
    f.model_bad_json = _copy(f.model, root / "model-bad-json")
    (f.model_bad_json / "config.json").write_text("{not json")
    f.model_wrong_type = _copy(f.model, root / "model-wrong-type")
    _edit_json(f.model_wrong_type / "config.json", lambda c: c["model"].update(embed_dim="sixteen"))
    f.model_no_sha = _copy(f.model, root / "model-no-sha")
    _edit_json(f.model_no_sha / "config.json", lambda c: c.pop("weights_sha256"))
    f.model_truncated = _copy(f.model, root / "model-truncated")
    weights = f.model_truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    f.model_no_weights = _copy(f.model, root / "model-no-weights")
    (f.model_no_weights / "model.safetensors").unlink()
    f.model_format = _copy(f.model, root / "model-format")
    _edit_json(f.model_format / "config.json", lambda c: c.update(format="something-else"))
    f.model_no_gallery = root / "model-no-gallery"
    torch.manual_seed(0)
    save_model_dir(f.model_no_gallery, GeoLocModel(tiny_config()), backbone="unused")

    f.model_nan = _copy(f.model, root / "model-nan")  # weights with a NaN, re-signed as `weights rehash` would have done
    _nan_weights(f.model_nan)

    # Feature stores (32-d, as the tiny model takes).
    f.store = _store(root / "store")
    f.store_64 = _store(root / "store-64", dim=64)
    f.store_small = _store(root / "store-small", n=8)
    broken = {
        "no_index": lambda s: (s / "index.csv").unlink(),
        "empty_index": lambda s: (s / "index.csv").write_text("id,lat,lon,image\n"),
        "nan_lat": lambda s: _replace_cell(s / "index.csv", 3, 1, "nan"),
        "lat_out": lambda s: _replace_cell(s / "index.csv", 3, 1, "-150.5"),
        "blank_lat": lambda s: _replace_cell(s / "index.csv", 4, 1, ""),
        "no_shards": lambda s: _edit_json(s / "manifest.json", lambda m: m.update(shards=[])),
        "wide_shard": lambda s: np.save(s / "shards" / "00000.npy", np.zeros((48, 33), np.float32)),
        "short_shard": lambda s: np.save(s / "shards" / "00000.npy", np.zeros((40, 32), np.float32)),
        "nan_feature": lambda s: _nan_feature(s / "shards" / "00000.npy", 5),
        "incomplete": lambda s: _edit_json(s / "manifest.json", lambda m: m.update(complete=False)),
        "bad_manifest": lambda s: (s / "manifest.json").write_text("[1, 2"),
        "no_manifest": lambda s: (s / "manifest.json").unlink(),
        "manifest_types": lambda s: _edit_json(s / "manifest.json", lambda m: m["backbone"].update(feature_dim="wide")),
    }
    for name, breakage in broken.items():
        folder = _copy(f.store, root / f"store-{name}")
        breakage(folder)
        _resign(folder)  # bad content with matching checksums, as a store from another writer (or rehashed) can be
        setattr(f, f"store_{name}", folder)
    f.store_edited_index = _copy(f.store, root / "store-edited-index")  # an edit after writing: the checksums catch it
    _replace_cell(f.store_edited_index / "index.csv", 3, 1, "12.5")
    f.store_edited_shard = _copy(f.store, root / "store-edited-shard")
    _nan_feature(f.store_edited_shard / "shards" / "00000.npy", 5)

    # Feature arrays and GPS lists.
    f.features = root / "f.npy"
    np.save(f.features, np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32))
    f.features_wide = root / "f-wide.npy"
    np.save(f.features_wide, np.zeros((4, 33), np.float32))
    f.features_nan = root / "f-nan.npy"
    array = np.ones((4, 32), np.float32)
    array[2, 3] = np.nan
    np.save(f.features_nan, array)
    f.features_text = root / "f-text.npy"
    np.save(f.features_text, np.array([["a"] * 32] * 2))
    f.features_empty = root / "f-empty.npy"
    np.save(f.features_empty, np.zeros((0, 32), np.float32))
    f.features_3d = root / "f-3d.npy"
    np.save(f.features_3d, np.zeros((2, 3, 32), np.float32))
    f.not_npy = root / "f-not.npy"
    f.not_npy.write_text("hello")
    f.zero_features = root / "f-zero.npy"
    np.save(f.zero_features, np.zeros((5, 4), np.float32))
    f.gps4 = _write(root / "g4.csv", "LAT,LON\n1,2\n3,4\n5,6\n7,8\n")
    f.gps3 = _write(root / "g3.csv", "LAT,LON\n1,2\n3,4\n5,6\n")
    f.gps5 = _write(root / "g5.csv", "LAT,LON\n" + "\n".join(f"{10 * i},{20 * i}" for i in range(5)) + "\n")
    f.gps_bad = _write(root / "g-bad.csv", "LAT,LON\n1,2\n95,4\n5,6\n7,8\n")
    f.gps_nan = _write(root / "g-nan.csv", "LAT,LON\n1,2\nnan,4\n5,6\n7,8\n")
    f.gps_nolat = _write(root / "g-nolat.csv", "X,LON\n1,2\n")
    f.features_huge = root / "f-huge.npy"  # finite float32, but the image head overflows on it
    array = np.random.default_rng(3).normal(size=(4, 32)).astype(np.float32)
    array[1] = 3e38
    np.save(f.features_huge, array)
    f.store_huge = _store(root / "store-huge")
    huge = np.load(f.store_huge / "shards" / "00000.npy")
    huge[7] = 3e38
    np.save(f.store_huge / "shards" / "00000.npy", huge)
    _resign(f.store_huge)
    f.store_identical = write_store(root / "store-identical", np.tile(np.random.default_rng(4).normal(size=(1, 32)), (200, 1)),
                                    np.stack([np.linspace(-60, 60, 200), np.linspace(-170, 170, 200)], 1), dtype="float32").folder
    f.gps_two_lat = _write(root / "g-two-lat.csv", "LAT,LON,LAT\n1,2,3\n3,4,5\n")
    f.features25 = root / "f25.npy"
    np.save(f.features25, np.random.default_rng(2).normal(size=(25, 32)).astype(np.float32))
    f.gps_swapped = _write(root / "g-swapped.csv", "LAT,LON\n" + "\n".join(f"{-74.0 + 0.01 * i:.4f},{40.7 + 0.01 * i:.4f}" for i in range(25)) + "\n")
    f.gallery_text = _write(root / "gallery-text.csv", "LAT,LON\n1,2\nabc,4\n")
    f.gallery_empty = _write(root / "gallery-empty.csv", "")

    # Prediction files and reports.
    header = "gt_lat,gt_long,predicted_lat,predicted_long\n"
    f.preds = _write(root / "p.csv", header + "48.85,2.35,48.86,2.34\n40.7,-74.0,41.0,-73.9\n")
    f.preds_footer_only = _write(root / "p-footer.csv", header + "mean,,,\ntotal,,,\n")
    f.preds_bad_truth = _write(root / "p-truth.csv", header + "48.85,2.35,48.86,2.34\n95,2,3,4\n")
    f.preds_nan_truth = _write(root / "p-nantruth.csv", header + "nan,2.35,48.86,2.34\n")
    f.preds_no_columns = _write(root / "p-cols.csv", "a,b,c\n1,2,3\n")
    f.preds_empty = _write(root / "p-empty.csv", "")
    swapped = [f"{-74.0 + 0.01 * i:.4f},{40.7 + 0.01 * i:.4f},{-74.0:.4f},{40.7:.4f}" for i in range(25)]
    f.preds_swapped = _write(root / "p-swapped.csv", header + "\n".join(swapped) + "\n")
    f.preds_same_column = _write(root / "p-same.csv", "lat,lon,pred_lat,pred_lon\n1,2,3,4\n")
    f.report = root / "r.json"
    assert main(["score", str(f.preds), "--no-admin", "--out", str(f.report)]) == 0
    report = json.loads(f.report.read_text())
    f.report_string = _write(root / "r-string.json", json.dumps(report | {"accuracy": {"25": "high"}}))
    f.report_n0 = _write(root / "r-n0.json", json.dumps(report | {"n": 0}))
    f.report_nan = _write(root / "r-nan.json", json.dumps(report).replace(f'"geoscore": {report["geoscore"]}', '"geoscore": NaN'))
    f.report_no_accuracy = _write(root / "r-noacc.json", json.dumps({"n": 3}))
    f.report_list = _write(root / "r-list.json", "[1, 2, 3]")
    f.report_bad_json = _write(root / "r-bad.json", "{")

    # Datasets and photo folders.
    f.images = root / "images"
    for i in range(3):
        jpeg(f.images / f"img{i}.jpg", seed=i)
    f.dataset = _write(root / "d.csv", "IMG_FILE,LAT,LON\nimg0.jpg,10,20\nimg1.jpg,-33.9,151.2\nimg2.jpg,40.7,-74.0\n")
    f.dataset_empty = _write(root / "d-empty.csv", "")
    f.dataset_nolat = _write(root / "d-nolat.csv", "IMG_FILE,LON\nimg0.jpg,3\n")
    f.dataset_unknown = _write(root / "d-unknown.csv", "name,x,y\na,1,2\n")
    f.dataset_all_bad = _write(root / "d-bad.csv", "IMG_FILE,LAT,LON\nimg0.jpg,91,20\nimg1.jpg,nan,1\nmean,,\n")
    f.dataset_lat91 = _write(root / "d-91.csv", "IMG_FILE,LAT,LON\nimg0.jpg,91,20\nimg1.jpg,10,20\n")
    for i in range(3, 25):
        jpeg(f.images / f"img{i}.jpg", size=(8, 8), seed=i)
    rows = [f"img{i}.jpg,{-74.0 + 0.01 * i:.4f},{40.7 + 0.01 * i:.4f}" for i in range(25)]  # New York, as (lon, lat)
    f.dataset_swapped = _write(root / "d-swapped.csv", "IMG_ID,LAT,LON,S3_Label\n" + "\n".join(f"{r},1" for r in rows) + "\n")
    f.photos = root / "photos"
    jpeg(f.photos / "ok.jpg", exif=gps_exif(48.85, 2.35))
    f.photos_none = root / "photos-none"
    jpeg(f.photos_none / "nogps.jpg")
    f.photos_bomb = root / "photos-bomb"
    f.photos_bomb.mkdir()
    Image.new("1", (20_000, 20_000)).save(f.photos_bomb / "bomb.png")  # 400 MP, a few KB on disk
    f.photos_bad_ref = root / "photos-ref"
    exif = gps_exif(48.85, 2.35)
    exif[0x8825] = {**exif[0x8825], 1: "X"}
    jpeg(f.photos_bad_ref / "ref.jpg", exif=exif)
    f.photos_minutes = root / "photos-minutes"
    exif = gps_exif(48.85, 2.35)
    exif[0x8825] = {**exif[0x8825], 2: (48.0, 70.0, 0.0)}
    jpeg(f.photos_minutes / "minutes.jpg", exif=exif)
    f.not_image = _write(root / "readme.txt", "hello")
    f.truncated_jpeg = root / "truncated.jpg"
    f.truncated_jpeg.write_bytes(jpeg(root / "whole.jpg").read_bytes()[:300])
    f.bomb_png = f.photos_bomb / "bomb.png"

    # Training configs and runs.
    f.config = _write(root / "c.yaml", f"name: t\ndata: {{train: {f.store}}}\nloss: {{name: infonce}}\ntrain: {{max_steps: 2}}\n")
    f.config_bad_yaml = _write(root / "c-bad.yaml", "loss: [unclosed\n")
    f.config_list = _write(root / "c-list.yaml", "- 1\n- 2\n")
    f.variogram_bad = _write(root / "v-bad.json", "{not json")
    f.variogram_unfitted = _write(root / "v-unfitted.json", '{"model": "spherical", "nugget": null}')
    f.variogram_cressie = _write(root / "v-cressie.json", json.dumps({"model": "spherical", "nugget": 0.1, "psill": 0.5,
                                                                      "range_km": 1000.0, "estimator": "cressie"}))
    f.run = root / "run"
    assert main(["train", "--config", str(f.config), *SMALL, "--out", str(f.run), "--no-progress"]) == 0
    f.run_changed = _copy(f.run, root / "run-changed")
    _edit_json(f.run_changed / "data.json", lambda d: d.update(fingerprint="0" * 64))
    f.run_tampered = _copy(f.run, root / "run-tampered")
    checkpoint = f.run_tampered / "checkpoints" / (f.run_tampered / "checkpoints" / "latest").read_text()
    data = bytearray((checkpoint / "model.safetensors").read_bytes())
    data[-5] ^= 1
    (checkpoint / "model.safetensors").write_bytes(bytes(data))
    f.run_other_shape = _copy(f.run, root / "run-other-shape")  # its config.json edited by hand
    _edit_json(f.run_other_shape / "config.json", lambda c: c["model"].update(embed_dim=8))
    f.run_no_data = _copy(f.run, root / "run-no-data")
    (f.run_no_data / "data.json").unlink()
    f.run_no_checkpoint = root / "run-no-checkpoint"
    f.run_no_checkpoint.mkdir()
    shutil.copy(f.run / "config.json", f.run_no_checkpoint / "config.json")
    shutil.copy(f.run / "data.json", f.run_no_checkpoint / "data.json")

    # A simulated world, and folders in the way.
    f.world = root / "world"
    assert main(["simulate", "--out", str(f.world), "--n-train", "200", "--n-test", "20", "--dim", "8"]) == 0
    return f


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under the fixtures' root, with its size and modification time; gallery caches (derived, and
    written by any successful prediction) aside."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "cache" not in p.relative_to(root).parts}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _replace_cell(path: Path, line: int, column: int, value: str) -> None:
    lines = path.read_text().splitlines()
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def _nan_weights(model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    from geovario.hashing import sha256_file

    weights = load_file(model_dir / "model.safetensors")
    weights["image_head.mlp.0.weight"][0, 0] = float("nan")
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "geovario-model"})
    _edit_json(model_dir / "config.json", lambda c: c.update(weights_sha256=sha256_file(model_dir / "model.safetensors")))


def _resign(folder: Path) -> None:
    """Record the checksums of a store's files as they are, whatever they hold (``data rehash`` refuses unreadable ones)."""
    from geovario.data.store import store_checksums

    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if isinstance(manifest, dict) and isinstance(manifest.get("shards"), list) and (folder / "index.csv").is_file():
        try:
            manifest["checksums"] = store_checksums(folder, manifest["shards"])
        except (FileNotFoundError, KeyError, TypeError):
            return
        (folder / "manifest.json").write_text(json.dumps(manifest))


def _nan_feature(path: Path, row: int) -> None:
    array = np.load(path)
    array[row, 0] = np.nan
    np.save(path, array)


@dataclass
class Case:
    id: str
    argv: object  # F -> list of arguments
    code: int
    words: tuple[str, ...]
    patch: str | None = None  # a failure of the machine to simulate: "readonly", "full"
    skip_if: object = None  # F -> reason to skip (only for facts of the machine, e.g. a GPU present)
    extra: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # environment variables set for the run
    may_write: tuple[str, ...] = ()  # paths under F.root (relative) that the refused command may leave; nothing else changes


def C(id, argv, code, *words, **kwargs) -> Case:
    return Case(id, argv, code, words, **kwargs)


def s(*parts):
    return [str(p) for p in parts]


def _cuda_present(_):
    return "this machine has CUDA" if torch.cuda.is_available() else None


CASES = [
    # --- usage errors (argparse, exit 2) ---
    C("no-command", lambda f: [], 2, "required: COMMAND"),
    C("unknown-command", lambda f: ["teleport"], 2, "invalid choice: 'teleport'"),
    C("predict-no-model", lambda f: s("predict", "--features", f.features), 2, "--model"),
    C("predict-no-input", lambda f: s("predict", "--model", f.model), 2, "one of the arguments --features --image --text is required"),
    C("predict-top-k-0", lambda f: s("predict", "--model", f.model, "--features", f.features, "--top-k", "0"), 2, "--top-k", "at least 1"),
    C("predict-top-k-text", lambda f: s("predict", "--model", f.model, "--features", f.features, "--top-k", "five"), 2, "expected an integer"),
    C("predict-batch-0", lambda f: s("predict", "--model", f.model, "--features", f.features, "--batch-size", "0"), 2, "--batch-size"),
    C("serve-port-70000", lambda f: s("serve", "--model", f.model, "--port", "70000"), 2, "--port", "1-65535"),
    C("serve-port-0", lambda f: s("serve", "--model", f.model, "--port", "0"), 2, "--port", "at least 1"),
    C("serve-upload-nan", lambda f: s("serve", "--model", f.model, "--max-upload-mb", "nan"), 2, "--max-upload-mb", "positive finite"),
    C("serve-upload-negative", lambda f: s("serve", "--model", f.model, "--max-upload-mb", "-1"), 2, "--max-upload-mb"),
    C("serve-pixels-0", lambda f: s("serve", "--model", f.model, "--max-pixels", "0"), 2, "--max-pixels"),
    C("evaluate-thresholds-nan", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "e.json", "--thresholds=nan"),
      2, "thresholds must be positive finite"),
    C("evaluate-thresholds-negative", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "e.json", "--thresholds=-5,25"),
      2, "thresholds"),
    C("evaluate-thresholds-text", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "e.json", "--thresholds", "near,far"),
      2, "comma-separated kilometres"),
    C("evaluate-thresholds-inf", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "e.json", "--thresholds", "inf"),
      2, "thresholds"),
    C("evaluate-top-k-0", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "e.json", "--top-k", "0"), 2, "--top-k"),
    C("evaluate-no-out", lambda f: s("evaluate", "--model", f.model, "--store", f.store), 2, "--out"),
    C("score-thresholds-nan", lambda f: s("score", f.preds, "--thresholds=nan"), 2, "thresholds must be positive finite"),
    C("score-thresholds-empty", lambda f: s("score", f.preds, "--thresholds", ","), 2, "thresholds"),
    C("variogram-max-lag-nan", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v.json", "--max-lag-km", "nan"), 2, "--max-lag-km"),
    C("variogram-max-lag-negative", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v.json", "--max-lag-km", "-5"), 2, "--max-lag-km"),
    C("variogram-min-lag-zero", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v.json", "--min-lag-km", "0"), 2, "--min-lag-km"),
    C("variogram-short-lag-inf", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v.json", "--short-lag-km", "inf"), 2, "--short-lag-km"),
    C("variogram-bins-0", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v.json", "--bins", "0"), 2, "--bins"),
    C("variogram-seed-negative", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v.json", "--seed", "-1"), 2, "--seed"),
    C("variogram-model-unknown", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v.json", "--model", "cubic"), 2, "invalid choice"),
    C("simulate-seed-negative", lambda f: s("simulate", "--out", f.root / "w-neg", "--seed", "-1"), 2, "--seed", "at least 0"),
    C("simulate-n-train-0", lambda f: s("simulate", "--out", f.root / "w0", "--n-train", "0"), 2, "--n-train"),
    C("simulate-dim-text", lambda f: s("simulate", "--out", f.root / "w0", "--dim", "wide"), 2, "--dim"),
    C("demo-seed-negative", lambda f: s("demo", "--seed", "-3", "--out", f.root / "demo"), 2, "--seed"),
    C("extract-views-negative", lambda f: s("extract", "--data", f.dataset, "--backbone", f.clip, "--out", f.root / "x", "--views", "-1"), 2, "--views"),
    C("extract-workers-negative", lambda f: s("extract", "--data", f.dataset, "--backbone", f.clip, "--out", f.root / "x", "--workers", "-1"), 2, "--workers"),
    C("data-import-missing", lambda f: s("data", "import", "--features", f.root / "none.npy", "--gps", f.root / "none.csv", "--out", f.root / "imp"), 1, "none.npy", "not found"),
    C("extract-shard-0", lambda f: s("extract", "--data", f.dataset, "--backbone", f.clip, "--out", f.root / "x", "--shard-size", "0"), 2, "--shard-size"),
    C("extract-dtype", lambda f: s("extract", "--data", f.dataset, "--backbone", f.clip, "--out", f.root / "x", "--dtype", "int8"), 2, "invalid choice"),
    C("extract-format", lambda f: s("extract", "--data", f.dataset, "--format", "jpeg", "--backbone", f.clip, "--out", f.root / "x"), 2, "--format"),
    C("data-check-max-report", lambda f: s("data", "check", f.dataset, "--max-report", "-2"), 2, "--max-report"),
    C("bench-seeds-0", lambda f: s("bench", "losses", "--seeds", "0"), 2, "--seeds"),
    C("study-epochs-0", lambda f: s("bench", "study", "--epochs", "0"), 2, "--epochs"),
    C("weights-unknown", lambda f: s("weights", "clip"), 2, "invalid choice"),
    C("weights-both-sources", lambda f: s("weights", "geoclip", "--out", f.root / "gc", "--from", f.root, "--wheel", f.root), 2, "not allowed with"),

    # --- weights ---
    C("weights-from-missing", lambda f: s("weights", "geoclip", "--out", f.root / "gc", "--from", f.root / "nowhere"), 1, "folder not found"),
    C("weights-from-empty", lambda f: s("weights", "geoclip", "--out", f.root / "gc", "--from", f.images), 1, "not found (looked for"),
    C("weights-wheel-missing", lambda f: s("weights", "geoclip", "--out", f.root / "gc", "--wheel", f.root / "none.whl"), 1, "none.whl"),
    C("weights-wheel-not-zip", lambda f: s("weights", "geoclip", "--out", f.root / "gc", "--wheel", f.not_image), 1, "readme.txt"),
    C("rehash-missing", lambda f: s("weights", "rehash", f.root / "nowhere"), 1, "nowhere", "not found"),
    C("rehash-not-model", lambda f: s("weights", "rehash", f.images), 1, "config.json"),
    C("rehash-truncated", lambda f: s("weights", "rehash", f.model_truncated), 1, "cannot read safetensors"),

    # --- model directories (through predict) ---
    C("model-missing", lambda f: s("predict", "--model", f.root / "nowhere", "--features", f.features), 1, "model directory not found"),
    C("model-is-file", lambda f: s("predict", "--model", f.a_file, "--features", f.features), 1, "model directory not found"),
    C("model-no-config", lambda f: s("predict", "--model", f.model_no_config, "--features", f.features), 1, "config.json: missing"),
    C("model-config-not-json", lambda f: s("predict", "--model", f.model_bad_json, "--features", f.features), 1, "not valid JSON"),
    C("model-config-wrong-type", lambda f: s("predict", "--model", f.model_wrong_type, "--features", f.features), 1, "embed_dim = 'sixteen'"),
    C("model-config-format", lambda f: s("predict", "--model", f.model_format, "--features", f.features), 1, "not a geovario model config"),
    C("model-no-sha", lambda f: s("predict", "--model", f.model_no_sha, "--features", f.features), 1, "no weights_sha256", "weights rehash"),
    C("model-truncated", lambda f: s("predict", "--model", f.model_truncated, "--features", f.features), 1, "truncated or was modified"),
    C("model-no-weights", lambda f: s("predict", "--model", f.model_no_weights, "--features", f.features), 1, "model.safetensors: missing"),
    C("model-no-gallery", lambda f: s("predict", "--model", f.model_no_gallery, "--features", f.features), 1, "has no gallery"),

    # --- predict ---
    C("predict-features-missing", lambda f: s("predict", "--model", f.model, "--features", f.root / "none.npy"), 1, "features file not found"),
    C("predict-features-wide", lambda f: s("predict", "--model", f.model, "--features", f.features_wide), 1, "33-d", "32-d"),
    C("predict-features-nan", lambda f: s("predict", "--model", f.model, "--features", f.features_nan), 1, "row 2", "NaN"),
    C("predict-features-text", lambda f: s("predict", "--model", f.model, "--features", f.features_text), 1, "features of dtype <U1", "expected float16"),
    C("predict-features-empty", lambda f: s("predict", "--model", f.model, "--features", f.features_empty), 1, "no feature rows"),
    C("predict-features-3d", lambda f: s("predict", "--model", f.model, "--features", f.features_3d), 1, "shape"),
    C("predict-features-not-npy", lambda f: s("predict", "--model", f.model, "--features", f.not_npy), 1, "f-not.npy"),
    C("predict-top-k-over-gallery", lambda f: s("predict", "--model", f.model, "--features", f.features, "--top-k", "301"), 1, "gallery size 300"),
    C("predict-gallery-missing", lambda f: s("predict", "--model", f.model, "--features", f.features, "--gallery", f.root / "none.csv"), 1, "none.csv"),
    C("predict-gallery-text", lambda f: s("predict", "--model", f.model, "--features", f.features, "--gallery", f.gallery_text), 1, "gallery-text.csv: line 3"),
    C("predict-gallery-empty", lambda f: s("predict", "--model", f.model, "--features", f.features, "--gallery", f.gallery_empty), 1, "gallery-empty.csv"),
    C("predict-device-banana", lambda f: s("predict", "--model", f.model, "--features", f.features, "--device", "banana"), 1, "'banana'", "not a torch device"),
    C("predict-device-cuda", lambda f: s("predict", "--model", f.model, "--features", f.features, "--device", "cuda"), 1, "CUDA is not available",
      skip_if=_cuda_present),
    C("predict-device-cuda-99", lambda f: s("predict", "--model", f.model, "--features", f.features, "--device", "cuda:99"), 1, "cuda:99"),
    C("predict-device-tpu", lambda f: s("predict", "--model", f.model, "--features", f.features, "--device", "xla"), 1, "'xla'"),
    C("predict-image-missing", lambda f: s("predict", "--model", f.model, "--backbone", f.clip, "--image", f.root / "none.jpg"), 1, "none.jpg"),
    C("predict-image-text", lambda f: s("predict", "--model", f.model, "--backbone", f.clip, "--image", f.not_image), 1, "readme.txt", "not an image"),
    C("predict-image-truncated", lambda f: s("predict", "--model", f.model, "--backbone", f.clip, "--image", f.truncated_jpeg), 1, "truncated.jpg"),
    C("predict-image-bomb", lambda f: s("predict", "--model", f.model, "--backbone", f.clip, "--image", f.bomb_png), 1, "bomb.png"),
    C("predict-backbone-missing", lambda f: s("predict", "--model", f.model, "--backbone", f.root / "no" / "clip", "--image", f.images / "img0.jpg"),
      1, "backbone folder not found"),

    # --- data check / info ---
    C("check-missing", lambda f: s("data", "check", f.root / "none.csv"), 1, "none.csv", "not found"),
    C("check-empty", lambda f: s("data", "check", f.dataset_empty), 1, "empty CSV"),
    C("check-no-lat", lambda f: s("data", "check", f.dataset_nolat), 1, "missing column LAT"),
    C("check-unknown-format", lambda f: s("data", "check", f.dataset_unknown), 1, "cannot tell the format"),
    C("check-folder-as-csv-format", lambda f: s("data", "check", f.photos, "--format", "mp16"), 1, "is a folder"),
    C("check-csv-as-folder", lambda f: s("data", "check", f.dataset, "--format", "folder"), 1, "needs a folder"),
    C("check-images-missing", lambda f: s("data", "check", f.dataset, "--images", f.root / "no-images"), 1, "images folder not found"),
    C("info-missing-store", lambda f: s("data", "info", "--store", f.root / "nowhere"), 1, "feature store not found"),
    C("info-nothing", lambda f: s("data", "info"), 1, "need --store"),
    C("info-both", lambda f: s("data", "info", "--store", f.store, "--features", f.features, "--gps", f.gps4), 1, "not both"),
    C("info-rows-differ", lambda f: s("data", "info", "--features", f.features, "--gps", f.gps3), 1, "4 rows but", "3"),
    C("info-gps-bad", lambda f: s("data", "info", "--features", f.features, "--gps", f.gps_bad), 1, "g-bad.csv", "95"),
    C("info-gps-nan", lambda f: s("data", "info", "--features", f.features, "--gps", f.gps_nan), 1, "g-nan.csv"),
    C("info-gps-no-lat", lambda f: s("data", "info", "--features", f.features, "--gps", f.gps_nolat), 1, "g-nolat.csv"),
    C("evaluate-gps-swapped", lambda f: s("evaluate", "--model", f.model, "--features", f.features25, "--gps", f.gps_swapped, "--out",
                                           f.root / "e.json"), 1, "g-swapped.csv", "swapped"),

    # --- feature stores, checked when they open ---
    C("store-no-index", lambda f: s("data", "info", "--store", f.store_no_index), 1, "index.csv: missing"),
    C("store-empty-index", lambda f: s("data", "info", "--store", f.store_empty_index), 1, "index.csv: no rows"),
    C("store-nan-lat", lambda f: s("data", "info", "--store", f.store_nan_lat), 1, "index.csv:3", "not a number"),
    C("store-lat-out-of-range", lambda f: s("data", "info", "--store", f.store_lat_out), 1, "index.csv:3", "-150.5"),
    C("store-blank-lat", lambda f: s("data", "info", "--store", f.store_blank_lat), 1, "index.csv:4"),
    C("store-no-shards", lambda f: s("data", "info", "--store", f.store_no_shards), 1, "no feature shards"),
    C("store-wide-shard", lambda f: s("data", "info", "--store", f.store_wide_shard), 1, "00000.npy", "32-d"),
    C("store-edited-index", lambda f: s("data", "info", "--store", f.store_edited_index), 1, "index.csv: sha256 differs", "data rehash"),
    C("store-edited-shard", lambda f: s("data", "info", "--store", f.store_edited_shard), 1, "00000.npy: sha256 differs"),
    C("train-store-edited", lambda f: s("train", "--config", f.config, "--set", f"data.train={f.store_edited_shard}"), 1,
      "store-edited-shard/shards/00000.npy: sha256 differs"),
    C("store-short-shard", lambda f: s("data", "info", "--store", f.store_short_shard), 1, "40 rows", "48"),
    C("store-incomplete", lambda f: s("data", "info", "--store", f.store_incomplete), 1, "has not finished"),
    C("store-bad-manifest", lambda f: s("data", "info", "--store", f.store_bad_manifest), 1, "manifest.json", "not valid JSON"),
    C("store-no-manifest", lambda f: s("data", "info", "--store", f.store_no_manifest), 1, "not a geovario feature store"),
    C("store-manifest-types", lambda f: s("data", "info", "--store", f.store_manifest_types), 1, "feature_dim"),
    C("store-is-file", lambda f: s("data", "info", "--store", f.a_file), 1, "feature store not found"),
    C("evaluate-nan-feature", lambda f: s("evaluate", "--model", f.model, "--store", f.store_nan_feature, "--out", f.root / "e.json", "--no-admin",
                                            "--no-progress"), 1, "feature row 5", "NaN"),
    C("evaluate-nan-lat", lambda f: s("evaluate", "--model", f.model, "--store", f.store_nan_lat, "--out", f.root / "e.json"), 1, "index.csv:3"),
    C("evaluate-lat-out", lambda f: s("evaluate", "--model", f.model, "--store", f.store_lat_out, "--out", f.root / "e.json"), 1, "-150.5"),
    C("variogram-nan-feature", lambda f: s("variogram", "--store", f.store_nan_feature, "--out", f.root / "v.json", "--no-progress"), 1, "row 5"),

    # --- evaluate ---
    C("evaluate-dims", lambda f: s("evaluate", "--model", f.model, "--store", f.store_64, "--out", f.root / "e.json"), 1, "64", "32"),
    C("evaluate-gallery-missing", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--gallery", f.root / "no.csv", "--out", f.root / "e.json"),
      1, "no.csv"),
    C("evaluate-top-k-over", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--top-k", "400", "--out", f.root / "e.json", "--no-admin"),
      1, "gallery size 300"),
    C("evaluate-faiss-ivf", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--faiss", "IVF4096,Flat", "--out", f.root / "e.json",
                                         "--no-admin", "--no-progress"), 1, "IVF4096", "cannot be trained"),
    C("evaluate-faiss-factory", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--faiss", "Nonsense!", "--out", f.root / "e.json",
                                             "--no-admin", "--no-progress"), 1, "Nonsense!"),
    C("evaluate-out-under-file", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.a_file / "e.json", "--no-admin",
                                              "--no-progress"), 1, "a-file.txt", "cannot create the output folder"),
    C("evaluate-out-is-folder", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.images, "--no-admin", "--no-progress"),
      1, "is a folder"),
    C("evaluate-plots-under-file", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "e2.json", "--plots",
                                                f.a_file / "plots", "--no-admin", "--no-progress"), 1, "cannot create the output folder"),
    C("evaluate-readonly", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "ro" / "e.json", "--no-admin",
                                        "--no-progress"), 1, "ro/e.", "cannot write (Permission denied)", patch="readonly"),
    C("evaluate-disk-full", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "full" / "e.json", "--no-admin",
                                         "--no-progress"), 1, "No space left on device", patch="full"),
    C("evaluate-device", lambda f: s("evaluate", "--model", f.model, "--store", f.store, "--out", f.root / "e.json", "--device", "banana"), 1, "banana"),

    # --- score ---
    C("score-missing", lambda f: s("score", f.root / "none.csv"), 1, "predictions file not found"),
    C("score-empty", lambda f: s("score", f.preds_empty), 1, "empty file"),
    C("score-no-columns", lambda f: s("score", f.preds_no_columns), 1, "cannot find the true lat column"),
    C("score-footer-only", lambda f: s("score", f.preds_footer_only, "--no-admin"), 1, "no data rows"),
    C("score-bad-truth", lambda f: s("score", f.preds_bad_truth, "--no-admin"), 1, "p-truth.csv:3", "true coordinates"),
    C("score-nan-truth", lambda f: s("score", f.preds_nan_truth, "--no-admin"), 1, "p-nantruth.csv:2"),
    C("score-swapped", lambda f: s("score", f.preds_swapped, "--no-admin"), 1, "swapped", "--true-lat"),
    C("score-named-missing", lambda f: s("score", f.preds, "--true-lat", "nope"), 1, "no column 'nope'"),
    C("score-same-column", lambda f: s("score", f.preds_same_column, "--pred-lat", "lat"), 1, "same column"),
    C("score-out-under-file", lambda f: s("score", f.preds, "--no-admin", "--out", f.a_file / "r.json"), 1, "cannot create the output folder"),
    C("score-disk-full", lambda f: s("score", f.preds, "--no-admin", "--out", f.root / "full2" / "r.json"), 1, "No space left", patch="full"),
    C("score-folder", lambda f: s("score", f.images), 1, "predictions file not found"),

    # --- compare ---
    C("compare-missing", lambda f: s("compare", f.report, f.root / "none.json"), 1, "none.json", "not found"),
    C("compare-folder", lambda f: s("compare", f.report, f.images), 1, "is a folder"),
    C("compare-string-accuracy", lambda f: s("compare", f.report, f.report_string), 1, "accuracy at 25 km is 'high'"),
    C("compare-n0", lambda f: s("compare", f.report, f.report_n0), 1, "n is 0"),
    C("compare-nan", lambda f: s("compare", f.report, f.report_nan), 1, "geoscore"),
    C("compare-no-accuracy", lambda f: s("compare", f.report, f.report_no_accuracy), 1, "not a geovario evaluation report"),
    C("compare-list", lambda f: s("compare", f.report_list), 1, "not a geovario evaluation report"),
    C("compare-bad-json", lambda f: s("compare", f.report_bad_json), 1, "not valid JSON"),
    C("compare-csv", lambda f: s("compare", f.preds), 1, "not valid JSON"),

    # --- variogram ---
    C("variogram-missing-store", lambda f: s("variogram", "--store", f.root / "none", "--out", f.root / "v.json"), 1, "feature store not found"),
    C("variogram-zero-norm", lambda f: s("variogram", "--features", f.zero_features, "--gps", f.gps5, "--out", f.root / "v.json"), 1, "zero norm"),
    C("variogram-too-few", lambda f: s("variogram", "--features", f.features, "--gps", f.gps4, "--out", f.root / "v.json", "--bins", "30", "--linear-bins",
                                        "--no-progress"), 1, "non-empty bins", may_write=("v.json",)),  # the bins, as documented
    C("variogram-out-under-file", lambda f: s("variogram", "--store", f.store, "--out", f.a_file / "v.json", "--no-progress"), 1, "cannot create the output folder"),
    C("variogram-plot-under-file", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v2.json", "--plot", f.a_file / "v.png",
                                                "--no-progress"), 1, "cannot create the output folder"),
    C("variogram-compare-missing", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v3.json", "--compare", f.root / "none"),
      1, "feature store not found"),

    # --- extract ---
    C("extract-missing-data", lambda f: s("extract", "--data", f.root / "none.csv", "--backbone", f.clip, "--out", f.root / "x"), 1, "none.csv", "not found"),
    C("extract-no-usable-rows", lambda f: s("extract", "--data", f.dataset_all_bad, "--images", f.images, "--backbone", f.clip, "--out", f.root / "x"),
      1, "no usable rows", extra={"stderr_lines": None}),
    C("extract-strict", lambda f: s("extract", "--data", f.dataset_lat91, "--images", f.images, "--backbone", f.clip, "--out", f.root / "x", "--strict"),
      1, "d-91.csv:2", "91"),
    C("extract-swapped", lambda f: s("extract", "--data", f.dataset_swapped, "--images", f.images, "--backbone", f.clip, "--out", f.root / "x"),
      1, "swapped", extra={"stderr_lines": None}),
    C("extract-out-under-file", lambda f: s("extract", "--data", f.dataset, "--images", f.images, "--backbone", f.clip, "--out", f.a_file / "x",
                                             "--no-progress"), 1, "a-file.txt", extra={"stderr_lines": None}),
    C("extract-backbone-missing", lambda f: s("extract", "--data", f.dataset, "--images", f.images, "--backbone", f.root / "no" / "clip",
                                               "--out", f.root / "x"), 1, "backbone folder not found", extra={"stderr_lines": None}),
    C("extract-device", lambda f: s("extract", "--data", f.dataset, "--images", f.images, "--backbone", f.clip, "--out", f.root / "x",
                                     "--device", "banana"), 1, "banana", extra={"stderr_lines": None}),

    # --- photo folders ---
    C("photos-bomb", lambda f: s("data", "check", f.photos_bomb), 1, extra={"stdout": "bomb.png", "stderr_lines": 0}),
    C("photos-bad-ref", lambda f: s("data", "check", f.photos_bad_ref), 1, extra={"stdout": "GPS reference 'X'", "stderr_lines": 0}),
    C("photos-minutes-70", lambda f: s("data", "check", f.photos_minutes), 1, extra={"stdout": "not a valid angle", "stderr_lines": 0}),
    C("photos-no-gps", lambda f: s("data", "check", f.photos_none), 1, extra={"stdout": "no GPS in EXIF", "stderr_lines": 0}),
    C("check-swapped-columns", lambda f: s("data", "check", f.dataset_swapped, "--images", f.images), 1,
      extra={"stdout": "swapped", "stderr_lines": 0}),
    C("check-bad-rows", lambda f: s("data", "check", f.dataset_lat91, "--images", f.images), 1, extra={"stdout": "d-91.csv:2", "stderr_lines": 0}),

    # --- train ---
    C("train-no-config", lambda f: s("train"), 1, "give --config"),
    C("train-config-missing", lambda f: s("train", "--config", f.root / "none.yaml"), 1, "config file not found"),
    C("train-config-bad-yaml", lambda f: s("train", "--config", f.config_bad_yaml), 1, "not valid YAML"),
    C("train-config-list", lambda f: s("train", "--config", f.config_list), 1, "a config must be a mapping"),
    C("train-unknown-key", lambda f: s("train", "--config", f.config, "--set", "loss.nme=infonce"), 1, "unknown config key loss.nme"),
    C("train-set-no-equals", lambda f: s("train", "--config", f.config, "--set", "loss.name"), 1, "--set expects key=value"),
    C("train-lr-nan", lambda f: s("train", "--config", f.config, "--set", "optim.lr=.nan"), 1, "optim.lr", "finite"),
    C("train-lr-inf", lambda f: s("train", "--config", f.config, "--set", "optim.lr=.inf"), 1, "optim.lr", "finite"),
    C("train-lr-text", lambda f: s("train", "--config", f.config, "--set", "optim.lr=fast"), 1, "optim.lr", "expected float"),
    C("train-lr-negative", lambda f: s("train", "--config", f.config, "--set", "optim.lr=-1e-3"), 1, "optim.lr", "positive"),
    C("train-batch-text", lambda f: s("train", "--config", f.config, "--set", "train.batch_size=big"), 1, "train.batch_size", "expected int"),
    C("train-batch-0", lambda f: s("train", "--config", f.config, "--set", "train.batch_size=0"), 1, "train.batch_size", "at least 1"),
    C("train-max-steps-0", lambda f: s("train", "--config", f.config, "--set", "train.max_steps=0"), 1, "train.max_steps", "at least 1"),
    C("train-epochs-0", lambda f: s("train", "--config", f.config, "--set", "train.epochs=0"), 1, "train.epochs"),
    C("train-gamma", lambda f: s("train", "--config", f.config, "--set", "optim.step_gamma=1.5"), 1, "optim.step_gamma"),
    C("train-seed-negative", lambda f: s("train", "--config", f.config, "--set", "train.seed=-1"), 1, "train.seed"),
    C("train-workers-negative", lambda f: s("train", "--config", f.config, "--set", "data.workers=-2"), 1, "data.workers", "negative"),
    C("train-noise-negative", lambda f: s("train", "--config", f.config, "--set", "negatives.queue_noise_m=-5"), 1, "negatives.queue_noise_m"),
    C("train-tau", lambda f: s("train", "--config", f.config, "--set", "loss.tau_plus=1.0"), 1, "loss.tau_plus"),
    C("train-theta1", lambda f: s("train", "--config", f.config, "--set", "loss.theta1_km=-10"), 1, "loss.theta1_km"),
    C("train-queue-small", lambda f: s("train", "--config", f.config, "--set", "model.queue_size=8"), 1, "model.queue_size", "smaller than"),
    C("train-loss-unknown", lambda f: s("train", "--config", f.config, "--set", "loss.name=magic"), 1, "loss.name", "is not one of"),
    C("train-mode-unknown", lambda f: s("train", "--config", f.config, "--set", "loss.mode=other"), 1, "loss.mode"),
    C("train-range-unknown", lambda f: s("train", "--config", f.config, "--set", "loss.penalty_range=far"), 1, "loss.penalty_range"),
    C("train-selection", lambda f: s("train", "--config", f.config, "--set", "negatives.selection=closest"), 1, "negatives.selection"),
    C("train-combined-empty", lambda f: s("train", "--config", f.config, "--set", "loss.name=combined"), 1, "loss.parts"),
    C("train-store-missing", lambda f: s("train", "--config", f.config, "--set", f"data.train={f.root / 'none'}"), 1, "data.train", "not found"),
    C("train-store-nan-lat", lambda f: s("train", "--config", f.config, "--set", f"data.train={f.store_nan_lat}"), 1, "index.csv:3"),
    C("train-store-nan-feature", lambda f: s("train", "--config", f.config, *SMALL, "--set", f"data.train={f.store_nan_feature}", "--set",
                                              "train.max_steps=20", "--out", f.root / "run-nan", "--no-progress"), 1, "feature row 5", "NaN",
      may_write=("run-nan/config.json", "run-nan/data.json", "run-nan/metrics.csv")),  # the steps before the bad row
    C("train-val-wide", lambda f: s("train", "--config", f.config, *SMALL, "--set", f"data.val={f.store_64}", "--out", f.root / "run-val"),
      1, "data.val", "64-d"),
    C("train-val-missing", lambda f: s("train", "--config", f.config, *SMALL, "--set", f"data.val={f.root / 'none'}", "--out", f.root / "run-val2"),
      1, "data.val", "not found"),
    C("train-val-empty", lambda f: s("train", "--config", f.config, *SMALL, "--set", f"data.val={f.store_empty_index}", "--out", f.root / "run-val3"),
      1, "data.val", "no rows"),
    C("train-batch-over-data", lambda f: s("train", "--config", f.config, *SMALL, "--set", f"data.train={f.store_small}", "--out", f.root / "r-small"),
      1, "larger than the 8 training samples"),
    C("train-init-missing", lambda f: s("train", "--config", f.config, *BATCH, "--set", f"model.init={f.root / 'none'}", "--out", f.root / "r-init"),
      1, "model.init"),
    C("train-init-shape", lambda f: s("train", "--config", f.config, *BATCH, "--set", f"model.init={f.model}",
                                       "--set", "model.embed_dim=8",
                                       "--out", f.root / "r-shape"), 1, "model.embed_dim", "contradicts"),
    C("train-variogram-bad", lambda f: s("train", "--config", f.config, *SMALL, "--set", "loss.name=semivariogram", "--set",
                                          f"loss.variogram={f.variogram_bad}", "--out", f.root / "r-v"), 1, "loss.variogram"),
    C("train-variogram-unfitted", lambda f: s("train", "--config", f.config, *SMALL, "--set", "loss.name=semivariogram", "--set",
                                               f"loss.variogram={f.variogram_unfitted}", "--out", f.root / "r-v2"), 1, "no fitted model"),
    C("train-variogram-cressie", lambda f: s("train", "--config", f.config, *SMALL, "--set", "loss.name=semivariogram", "--set",
                                              f"loss.variogram={f.variogram_cressie}", "--out", f.root / "r-v3"), 1, "Matheron"),
    C("train-gallery-csv-geometry", lambda f: s("train", "--config", f.config, *SMALL, "--set", "loss.name=semivariogram", "--set",
                                                 "negatives.source=gallery", "--set", f"negatives.gallery={f.gps5}", "--out", f.root / "r-g"),
      1, "negatives.gallery", "feature store"),
    C("train-device", lambda f: s("train", "--config", f.config, "--set", "train.device=banana", "--out", f.root / "r-d"), 1, "banana"),
    C("train-out-under-file", lambda f: s("train", "--config", f.config, *SMALL, "--out", f.a_file / "run"), 1, "cannot create the output folder"),
    C("resume-not-a-run", lambda f: s("train", "--resume", f.images), 1, "no config.json"),
    C("resume-no-checkpoint", lambda f: s("train", "--resume", f.run_no_checkpoint), 1, "no checkpoint to resume from"),
    C("resume-store-changed", lambda f: s("train", "--resume", f.run_changed, "--set", "train.max_steps=3"), 1,
      "training data changed", "000000000000 then"),
    C("resume-checkpoint-tampered", lambda f: s("train", "--resume", f.run_tampered, "--set", "train.max_steps=3"), 1,
      "model.safetensors", "sha256 differs"),
    C("resume-no-data-record", lambda f: s("train", "--resume", f.run_no_data, "--set", "train.max_steps=3"), 1, "no data.json"),
    C("resume-other-shape", lambda f: s("train", "--resume", f.run_other_shape, "--set", "train.max_steps=3"), 1,
      "incompatible model"),
    C("resume-set-embed-dim", lambda f: s("train", "--resume", f.run, "--set", "model.embed_dim=8", "--set", "train.max_steps=3"), 1,
      "--set model.embed_dim", "started with model.embed_dim = 16", "only train.max_steps"),
    C("resume-set-lr", lambda f: s("train", "--resume", f.run, "--set", "optim.lr=0.5", "--set", "train.max_steps=3"), 1,
      "--set optim.lr", "started with optim.lr = 3e-05", "Start a new run"),
    C("train-over-a-run", lambda f: s("train", "--config", f.config, *SMALL, "--out", f.run), 1,
      "holds a training run already", "--resume"),

    # --- simulate, demo, bench, study ---
    C("simulate-over-world", lambda f: s("simulate", "--out", f.world, "--n-train", "50", "--n-test", "5"), 1, "holds a world already", "--overwrite"),
    C("simulate-positions-missing", lambda f: s("simulate", "--out", f.root / "w-pos", "--positions", f.root / "none.csv", "--n-train", "5"),
      1, "positions file not found"),
    C("simulate-out-under-file", lambda f: s("simulate", "--out", f.a_file / "w", "--n-train", "5", "--n-test", "2", "--dim", "4"),
      1, "cannot create the output folder"),
    C("bench-world-missing", lambda f: s("bench", "losses", "--world", f.root / "none", "--seeds", "1", "--out", f.root / "b"), 1, "none"),
    C("bench-sweep-bad", lambda f: s("bench", "losses", "--world", f.world, "--sweep", "alpha=1", "--out", f.root / "b2"), 1, "KEY one of theta1"),
    C("bench-sweep-text", lambda f: s("bench", "losses", "--world", f.world, "--sweep", "s1=big", "--out", f.root / "b3"), 1, "values must be numbers"),
    C("bench-config-missing", lambda f: s("bench", "losses", "--world", f.world, "--configs", f.root / "none.yaml", "--out", f.root / "b4"),
      1, "cannot read config"),
    C("bench-out-under-file", lambda f: s("bench", "losses", "--world", f.world, "--out", f.a_file / "b", "--seeds", "1"), 1, "cannot create the output folder"),
    C("study-seeds", lambda f: s("bench", "study", "--seeds", "2", "--gallery-seeds", "3", "--out", f.root / "st"), 1, "must not exceed --seeds"),
    C("study-world-missing", lambda f: s("bench", "study", "--presets", "mp16", "--world", f"mp16={f.root / 'none'}", "--out", f.root / "st2"), 1, "not a simulated world"),
    C("study-world-not-world", lambda f: s("bench", "study", "--presets", "mp16", "--world", f"mp16={f.images}", "--out", f.root / "st3"), 1, "not a simulated world"),
    C("demo-out-under-file", lambda f: s("demo", "--quick", "--out", f.a_file / "demo"), 1, "cannot create the output folder"),

    # --- serve (refused before it listens) ---
    C("serve-model-missing", lambda f: s("serve", "--model", f.root / "nowhere", "--port", "8789"), 1, "model directory not found"),
    C("serve-top-k-200", lambda f: s("serve", "--model", f.model, "--port", "8790", "--top-k", "200"), 1, "--top-k", "between 1 and 100"),
    C("serve-device", lambda f: s("serve", "--model", f.model, "--port", "8791", "--device", "banana"), 1, "banana"),

    # --- weights that are not what they claim ---
    C("predict-nan-weights", lambda f: s("predict", "--model", f.model_nan, "--features", f.features), 1,
      "model-nan/model.safetensors", "image_head.mlp.0.weight holds NaN or infinity"),
    C("evaluate-nan-weights", lambda f: s("evaluate", "--model", f.model_nan, "--store", f.store, "--out", f.root / "e-nan.json", "--no-admin"),
      1, "holds NaN or infinity"),
    C("embed-gps-nan-weights", lambda f: s("embed-gps", "--model", f.model_nan, "--csv", f.gps4, "--out", f.root / "emb.npy"), 1,
      "holds NaN or infinity"),
    C("rehash-nan-weights", lambda f: s("weights", "rehash", f.model_nan), 1, "holds NaN or infinity"),
    C("predict-features-huge", lambda f: s("predict", "--model", f.model, "--features", f.features_huge), 1,
      "features row 1: the image head's output is not finite", "overflow float32"),
    C("evaluate-store-huge", lambda f: s("evaluate", "--model", f.model, "--store", f.store_huge, "--out", f.root / "e-huge.json",
                                          "--no-admin", "--no-progress"), 1, "features row 7", "not finite"),

    # --- readers ---
    C("embed-gps-two-lat-columns", lambda f: s("embed-gps", "--model", f.model, "--csv", f.gps_two_lat, "--out", f.root / "emb2.npy"), 1,
      "g-two-lat.csv: 2 latitude columns (LAT, LAT)"),
    C("predict-text-not-unicode", lambda f: ["predict", "--model", str(f.model), "--backbone", str(f.clip), "--text",
                                             b"caf\xe9".decode("utf-8", "surrogateescape")], 1, "text query 1: not valid Unicode"),

    # --- variogram ---
    C("variogram-plot-suffix", lambda f: s("variogram", "--store", f.store, "--out", f.root / "v9.json", "--plot", f.root / "v.xyz"), 2,
      "--plot", "cannot draw a .xyz file", ".png"),
    C("variogram-identical-rows", lambda f: s("variogram", "--store", f.store_identical, "--out", f.root / "v-same.json", "--no-progress"),
      1, "store-identical", "alike up to rounding", "no range to fit", may_write=("v-same.json",)),

    # --- model and schedule keys ---
    C("train-hidden-dim-0", lambda f: s("train", "--config", f.config, "--set", "model.hidden_dim=0"), 1, "model.hidden_dim", "at least 1"),
    C("train-embed-dim-negative", lambda f: s("train", "--config", f.config, "--set", "model.embed_dim=-4"), 1, "model.embed_dim"),
    C("train-rff-dim-0", lambda f: s("train", "--config", f.config, "--set", "model.rff_dim=0"), 1, "model.rff_dim"),
    C("train-sigmas-empty", lambda f: s("train", "--config", f.config, "--set", "model.sigmas=[]"), 1, "model.sigmas", "non-empty"),
    C("train-sigmas-negative", lambda f: s("train", "--config", f.config, "--set", "model.sigmas=[1, -16]"), 1, "model.sigmas", "positive"),
    C("train-warmup-too-long", lambda f: s("train", "--config", f.config, *SMALL, "--set", "optim.schedule=cosine", "--set",
                                            "optim.warmup_steps=5", "--out", f.root / "r-warm"), 1, "optim.warmup_steps", "run of 2 steps"),
    C("train-gallery-k-huge", lambda f: s("train", "--config", f.config, *SMALL, "--set", "negatives.source=gallery", "--set",
                                           "negatives.k=1000000000", "--out", f.root / "r-k"), 1, "negatives.k", "GB per training step",
      may_write=("r-k/config.json", "r-k/data.json")),
    C("train-queue-huge", lambda f: s("train", "--config", f.config, *SMALL, "--set", "model.queue_size=100000000000",
                                       "--out", f.root / "r-q"), 1, "model.queue_size", "GB per training step",
      may_write=("r-q/config.json", "r-q/data.json")),

    # --- the launcher's environment ---
    C("train-world-size-text", lambda f: s("train", "--config", f.config, *SMALL, "--out", f.root / "r-ws"), 1,
      "WORLD_SIZE: expected a whole number", env={"RANK": "0", "WORLD_SIZE": "abc"}),
    C("train-rank-beyond-world", lambda f: s("train", "--config", f.config, *SMALL, "--out", f.root / "r-ws2"), 1,
      "RANK=2 is not below WORLD_SIZE=2", env={"RANK": "2", "WORLD_SIZE": "2"}),
    C("extract-local-world-size-text", lambda f: s("extract", "--data", f.dataset, "--images", f.images, "--backbone", f.clip,
                                                   "--out", f.root / "x-lws"), 1, "LOCAL_WORLD_SIZE: expected", env={"LOCAL_WORLD_SIZE": "abc"},
      extra={"stderr_lines": None}),

    # --- a disk that fills while a run saves ---
    C("train-disk-full", lambda f: s("train", "--config", f.config, *SMALL, "--out", f.root / "r-full", "--no-progress"), 1,
      "No space left on device", patch="full"),
]


def test_enough_cases_across_every_command(F):
    commands = {case.argv(F)[0] for case in CASES if case.argv(F)}
    assert len(CASES) >= 150 and len({c.id for c in CASES}) == len(CASES)
    assert {"weights", "predict", "data", "extract", "variogram", "evaluate", "score", "compare", "train", "simulate", "bench", "demo",
            "serve"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, F, capsys, monkeypatch):
    if case.skip_if is not None and (reason := case.skip_if(F)):
        pytest.skip(reason)
    if case.patch == "readonly":  # root ignores permissions, so the failure is made where files are created
        import tempfile

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(tempfile, "mkstemp", denied)
    elif case.patch == "full":
        import os

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fsync", full)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    before = _snapshot(F.root)
    capsys.readouterr()
    code = main(case.argv(F))
    out, err = capsys.readouterr()
    assert code == case.code, (out, err)
    after = _snapshot(F.root)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert [p for p in changed if p not in case.may_write] == [], "a refused command wrote or changed files"
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("geovario: warning", "geovario: note"))]
    expected_lines = case.extra.get("stderr_lines", 1)
    if expected_lines is not None:
        assert len(lines) == expected_lines, err
    shown = lines[-1] if lines else ""
    if case.code == 1 and expected_lines:
        assert shown.startswith("geovario: error: "), err
    for word in case.words:
        assert word in shown, (word, shown)
    if "stdout" in case.extra:
        assert case.extra["stdout"] in out, out
