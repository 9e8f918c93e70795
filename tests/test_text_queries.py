"""Text -> GPS: CLIP's text tower, loaded only for text queries, through the image head."""

import json

import numpy as np
import pytest
import torch

from geovario.backbones import ClipBackbone, ClipTextTower
from geovario.cli import main
from geovario.predict import Predictor


@pytest.fixture
def text_model_dir(tmp_path, tiny_clip_text_dir):
    from conftest import random_gallery, tiny_config

    from geovario.model import GeoLocModel
    from geovario.modeldir import save_model_dir

    torch.manual_seed(0)
    return save_model_dir(tmp_path / "model", GeoLocModel(tiny_config()), backbone=str(tiny_clip_text_dir), gallery=random_gallery(300))


def test_predict_text_matches_clips_own_text_features_through_the_head(text_model_dir, tiny_clip_text_dir, capsys):
    from transformers import CLIPModel, CLIPTokenizer

    queries = ["a snowy street with red trams", "the beach"]
    assert main(["predict", "--model", str(text_model_dir), "--text", *queries, "--top-k", "3", "--json", "--no-progress"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [entry["input"] for entry in answer] == queries and all(len(e["predictions"]) == 3 for e in answer)
    # Independently: transformers' full CLIPModel and tokenizer, then the head and the gallery by brute force.
    clip, tokenizer = CLIPModel.from_pretrained(tiny_clip_text_dir).eval(), CLIPTokenizer.from_pretrained(tiny_clip_text_dir)
    predictor = Predictor(text_model_dir, device="cpu", progress=False)
    with torch.no_grad():
        tokens = tokenizer(queries, padding=True, truncation=True, max_length=16, return_tensors="pt")  # 16 positions
        text_features = clip.get_text_features(**tokens)
        if not torch.is_tensor(text_features):  # transformers 5 returns the output, projected pooler inside
            text_features = text_features.pooler_output
        logits = predictor.model(text_features, torch.from_numpy(predictor.gallery))
    best = logits.softmax(dim=1).topk(3, dim=1)
    for entry, index, prob in zip(answer, best.indices, best.values):
        np.testing.assert_allclose([[p["lat"], p["lon"]] for p in entry["predictions"]], predictor.gallery[index.numpy()], atol=1e-4)
        np.testing.assert_allclose([p["prob"] for p in entry["predictions"]], prob.numpy(), atol=1e-5)
    assert answer[0]["predictions"] != answer[1]["predictions"]  # the text matters


def test_image_backbone_never_loads_the_text_tower(tiny_clip_text_dir):
    backbone = ClipBackbone.load(str(tiny_clip_text_dir), "cpu")
    assert not any("text" in name for name, _ in backbone.model.named_parameters())
    tower = ClipTextTower.load(str(tiny_clip_text_dir), "cpu")
    assert not any("vision" in name for name, _ in tower.model.named_parameters())


def one_line(capsys, argv, code=1) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geovario: error: "), err
    return err[0]


def test_empty_text_and_a_backbone_without_text_tower(tmp_path, text_model_dir, tiny_clip_text_dir, capsys):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    base = ["predict", "--model", str(text_model_dir), "--no-progress"]
    assert "text query 2: empty text" in one_line(capsys, base + ["--text", "a street", "  "])
    undecodable = b"caf\xe9 in Paris".decode("utf-8", "surrogateescape")  # Latin-1 bytes in argv, as Python passes them on
    assert "text query 1: not valid Unicode at character 4 (\\udce9)" in one_line(capsys, base + ["--text", undecodable])
    vision_only = tmp_path / "vision-only"
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                   image_size=224, patch_size=32, projection_dim=32)).save_pretrained(vision_only)
    capsys.readouterr()  # save_pretrained's own progress bar
    line = one_line(capsys, base + ["--text", "a street", "--backbone", str(vision_only)])
    assert "has no text tower (a CLIPVisionConfig checkpoint)" in line
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((tiny_clip_text_dir / name).read_bytes())
    assert "has no usable CLIP tokenizer" in one_line(capsys, base + ["--text", "a street", "--backbone", str(no_tokenizer)])
