"""Shared fixtures: tiny models built through the real save/load paths, and the shared reference data."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from geovario.model import GeoLocModel, ModelConfig
from geovario.modeldir import save_model_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOVARIO_SHARED_DIR", REPO.parent / "shared"))
# CI sets this: a test that skips (no ../shared, no geoclip wheel, no chromium, no test extra) fails the run.
NO_SKIPS = os.environ.get("GEOVARIO_NO_SKIPS") == "1"


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if NO_SKIPS and skipped:
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reporter.write_line(f"GEOVARIO_NO_SKIPS: {report.nodeid} skipped: {reason}", red=True)
        reporter.write_line(f"GEOVARIO_NO_SKIPS: {len(skipped)} skipped tests fail this run", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def tiny_config(feature_dim: int = 32) -> ModelConfig:
    return ModelConfig(
        feature_dim=feature_dim, head_hidden_dim=32, embed_dim=16, sigmas=[1.0, 16.0],
        rff_dim=8, hidden_dim=32, hidden_layers=2, 
    )


def random_gallery(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lon = rng.uniform(-180, 180, n)
    return np.stack([lat, lon], 1).astype(np.float32)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    """No test reads or writes the user's real gallery cache."""
    monkeypatch.delenv("GEOVARIO_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    model = GeoLocModel(tiny_config())
    return save_model_dir(tmp_path / "tiny-model", model, backbone="unused", gallery=random_gallery(300))


@pytest.fixture(scope="module")
def served_model(tmp_path_factory) -> Path:
    """A tiny model directory for `geovario serve`, decisive enough that its probabilities differ on the map."""
    torch.manual_seed(0)
    model = GeoLocModel(tiny_config())
    model.logit_scale.data.fill_(math.log(300))
    return save_model_dir(tmp_path_factory.mktemp("serve") / "model", model, backbone="unused", gallery=random_gallery(500))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random CLIP, saved and reloaded exactly as a hub checkpoint would be."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        projection_dim=32,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_text_dir(tmp_path_factory) -> Path:
    """A random CLIP with a text tower and a tiny byte-level BPE tokenizer, both saved as a hub checkpoint is."""
    import json

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("tiny-clip-text")
    chars = list(bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("s", "t"), ("r", "e")]
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    CLIPTokenizer.from_pretrained(folder, model_max_length=16).save_pretrained(folder)  # as the hub ships it
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    config = CLIPConfig(
        projection_dim=32,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
    )
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def fixtures_dir() -> Path:
    folder = SHARED / "fixtures"
    if not folder.is_dir():
        pytest.skip(f"real photo fixtures not found at {folder}")
    return folder


@pytest.fixture
def geoclip_reference_dir() -> Path:
    for candidate in (os.environ.get("GEOVARIO_GEOCLIP_DIR"), SHARED / "reference" / "geoclip-1.3.0"):
        if candidate and Path(candidate, "location_encoder_weights.pth").is_file():
            return Path(candidate)
    pytest.skip("GeoCLIP 1.3.0 release files not found ($GEOVARIO_GEOCLIP_DIR or ../shared/reference/geoclip-1.3.0)")


@pytest.fixture(scope="session")
def geoclip_wheel(tmp_path_factory) -> Path:
    """The geoclip 1.3.0 wheel from PyPI ($GEOVARIO_GEOCLIP_WHEEL to reuse a local copy)."""
    if os.environ.get("GEOVARIO_GEOCLIP_WHEEL"):
        return Path(os.environ["GEOVARIO_GEOCLIP_WHEEL"])
    from geovario.errors import GeovarioError
    from geovario.interop.geoclip import download_wheel

    try:
        return download_wheel(tmp_path_factory.mktemp("wheel"))
    except GeovarioError as e:
        pytest.skip(f"cannot download geoclip==1.3.0 from the package registry ({e})")
