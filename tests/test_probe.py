"""The GPS-embedding probe: labels, splits, embeddings and the command end to end on a small sample."""

import json

import numpy as np
import pytest

from geovario.cli import main
from geovario.lab.probe import BLOCK_DEG, plain_rff, position_labels, probe_scores, splits, unit_vectors


def test_labels_of_known_places():
    labels = position_labels(np.array([[48.8584, 2.2945], [-33.8568, 151.2153], [35.6586, 139.7454], [-22.9519, -43.2105]]))
    assert labels["country"].tolist() == ["FR", "AU", "JP", "BR"]
    assert labels["continent"].tolist() == ["Europe", "Oceania", "Asia", "South America"]
    assert labels["admin1"][0].startswith("FR/") and labels["admin1"][1] == "AU/New South Wales"


def test_spatial_blocks_hold_out_whole_cells():
    rng = np.random.default_rng(0)
    latlon = np.stack([rng.uniform(-80, 80, 5000), rng.uniform(-180, 180, 5000)], 1)
    rows = splits(latlon, 3000, 1000)
    for train, test in rows.values():
        assert len(set(train) & set(test)) == 0 and len(train) == 3000 and 800 < len(test) <= 1000
    cell = lambda i: (np.floor((latlon[i, 0] + 90) / BLOCK_DEG), np.floor((latlon[i, 1] + 180) / BLOCK_DEG))  # noqa: E731
    train, test = rows["spatial blocks"]
    assert not {cell(i) for i in train} & {cell(i) for i in test}
    random_train, random_test = rows["random"]
    assert {cell(i) for i in random_train} & {cell(i) for i in random_test}  # the random split shares cells


def test_embeddings_and_a_probe_that_separates_hemispheres():
    rng = np.random.default_rng(1)
    latlon = np.stack([rng.uniform(-60, 60, 800), rng.uniform(-180, 180, 800)], 1)
    xyz = unit_vectors(latlon)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(np.degrees(np.arcsin(xyz[:, 2])), latlon[:, 0], atol=1e-4)
    rff = plain_rff(latlon)
    assert rff.shape == (800, 3 * 2 * 256) and np.abs(rff).max() <= 1 + 1e-6
    north = (latlon[:, 0] > 0).astype(int)
    good = probe_scores(xyz[:600], north[:600], xyz[600:], north[600:], "logistic")
    assert good["accuracy"] > 95
    noise = rng.normal(size=(800, 3))
    chance = probe_scores(noise[:600], north[:600], noise[600:], north[600:], "logistic")
    assert chance["accuracy"] < 70


@pytest.mark.slow
def test_command_end_to_end_on_a_small_sample(tmp_path, tiny_model_dir, geoclip_reference_dir, capsys):
    code = main(["bench", "gps-embeddings", "--out", str(tmp_path / "o"), "--sim-model", str(tiny_model_dir),
                 "--geoclip-from", str(geoclip_reference_dir), "--train-size", "400", "--test-size", "100", "--probes", "logistic"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "o" / "gps_embeddings.json").read_text())["rows"]
    assert len(rows) == 2 * 3 * 5  # splits x labels x embeddings
    continent = {r["embedding"]: r["accuracy"] for r in rows if r["split"] == "random" and r["label"] == "continent"}
    assert continent["GeoCLIP 1.3.0 encoder"] > 90  # a trained encoder knows its continents
    text = (tmp_path / "o" / "gps_embeddings.md").read_text()
    assert "geovario bench gps-embeddings --train-size 400 --test-size 100 --probes logistic" in text
    assert main(["bench", "gps-embeddings", "--out", str(tmp_path / "x"), "--probes", "svm"]) == 1
    assert "--probes: choose from logistic, mlp" in capsys.readouterr().err
