"""Make examples/landmark_features.npy: stand-in "CLIP features" for six famous places.

No real CLIP ViT-L/14 features can ship with the repository (that needs the 1.7 GB backbone), so
the README's first command geolocates synthetic ones instead: for each landmark in landmarks.csv,
a 768-d vector optimised so that GeoCLIP 1.3.0's image head maps it onto the location embedding of
that landmark. Predicting them exercises the real weights, the real 100K gallery and the real
retrieval path, and should land near each landmark. They are not photos; treat them as a check.

    python examples/make_landmark_features.py --model models/geoclip
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geovario.modeldir import load_model_dir

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="GeoCLIP model directory (geovario weights geoclip)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    model = load_model_dir(args.model).model.requires_grad_(False)
    places = pd.read_csv(HERE / "landmarks.csv")
    target = model.encode_locations(torch.tensor(places[["lat", "lon"]].to_numpy(), dtype=torch.float32))
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(len(places), model.config.feature_dim, generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([features], lr=0.05)
    for _ in range(args.steps):
        optimizer.zero_grad()
        cosine = (model.encode_images(features) * target).sum(1)
        loss = -cosine.mean() + 1e-4 * features.pow(2).sum(1).mean()  # stay near the initial scale
        loss.backward()
        optimizer.step()
    print(f"cosine to landmark embeddings: {cosine.detach().numpy().round(3).tolist()}")
    np.save(HERE / "landmark_features.npy", features.detach().numpy().astype(np.float32))


if __name__ == "__main__":
    main()
