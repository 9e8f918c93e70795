"""GeoCLIP-family model: a location encoder and an image head, compared by a scaled cosine.

Architecture follows GeoCLIP 1.3.0 (Vivanco et al., NeurIPS 2023): GPS is projected with
EqualEarth, encoded by random Fourier features at several scales sigma, each scale feeds its own
MLP "capsule", and the branch outputs are summed. Image features from a frozen backbone pass a
two-layer MLP. Both sides are L2-normalised and compared by a scaled cosine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from geovario.geo_tensors import equal_earth


@dataclass
class ModelConfig:
    """Shapes of a geovario model; the defaults are GeoCLIP 1.3.0's."""

    feature_dim: int = 768  # CLIP ViT-L/14 projected image embedding
    head_hidden_dim: int = 768
    embed_dim: int = 512
    sigmas: list[float] = field(default_factory=lambda: [2.0**0, 2.0**4, 2.0**8])
    rff_dim: int = 256  # frequencies per branch; the encoding has 2 * rff_dim values (cos, sin)
    hidden_dim: int = 1024
    hidden_layers: int = 3
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07

    @classmethod
    def from_dict(cls, values: dict, source: str = "model config") -> "ModelConfig":
        """Known keys, type-checked (ValueError naming the key); unknown keys are ignored (newer versions)."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a mapping of shapes, got {type(values).__name__}")
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}

        def positive_int(v):
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key, value in known.items():
            if key == "sigmas":
                ok = isinstance(value, list) and len(value) > 0 and all(number(v) and v > 0 for v in value)
            elif key == "init_logit_scale":
                ok = number(value)
            else:
                ok = positive_int(value)
            if not ok:
                raise ValueError(f"{source}: {key} = {value!r} is not a valid value")
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu")  # where torch.autocast may be on (the meta device has none)


class RandomFourierFeatures(nn.Module):
    """gamma(v) = [cos(2 pi B v), sin(2 pi B v)] with a fixed B ~ N(0, sigma^2) (Tancik et al. 2020)."""

    def __init__(self, sigma: float, in_dim: int = 2, n_frequencies: int = 256):
        super().__init__()
        self.sigma = sigma
        self.register_buffer("b", torch.randn(n_frequencies, in_dim) * sigma)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        # Always in float32, autocast or not: at sigma = 2^8 the phases reach thousands of radians, and bfloat16's
        # 8-bit mantissa (or float16's 11) would round them by whole radians, turning the finest branch into noise.
        if v.device.type in AUTOCAST_DEVICES and torch.is_autocast_enabled(v.device.type):
            with torch.autocast(v.device.type, enabled=False):
                return self._encode(v.float())
        return self._encode(v)

    def _encode(self, v: torch.Tensor) -> torch.Tensor:
        # Same expression as GeoCLIP's rff.functional.gaussian_encoding, for bitwise-equal float32.
        vp = 2 * math.pi * v @ self.b.T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class LocationBranch(nn.Module):
    """One scale of the location encoder: RFF(sigma) -> MLP with ReLU -> linear head."""

    def __init__(self, sigma: float, config: ModelConfig):
        super().__init__()
        self.rff = RandomFourierFeatures(sigma, 2, config.rff_dim)
        layers: list[nn.Module] = []
        width = 2 * config.rff_dim
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.ReLU()]
            width = config.hidden_dim
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.embed_dim)

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.rff(projected)))


class LocationEncoder(nn.Module):
    """(N, 2) GPS degrees -> (N, embed_dim) unnormalised embedding, summed over the sigma branches."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.branches = nn.ModuleList(LocationBranch(s, config) for s in config.sigmas)

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        projected = equal_earth(latlon)
        out = self.branches[0](projected)
        for branch in self.branches[1:]:
            out = out + branch(projected)
        return out


class ImageHead(nn.Module):
    """(N, feature_dim) frozen backbone features -> (N, embed_dim): Linear, ReLU, Linear."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(config.feature_dim, config.head_hidden_dim),
            nn.ReLU(),
            nn.Linear(config.head_hidden_dim, config.embed_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class GeoLocModel(nn.Module):
    """Image head + location encoder + learnable logit scale.

    GeoCLIP keeps its GPS queue inside the model; geovario keeps it with the other training
    negatives (``geovario.negatives``), so the model's state dict is exactly its learned weights.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        self.image_head = ImageHead(self.config)
        self.location_encoder = LocationEncoder(self.config)
        self.logit_scale = nn.Parameter(torch.tensor(self.config.init_logit_scale))

    def encode_images(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features -> unit image embeddings."""
        return F.normalize(self.image_head(features), dim=-1)

    def encode_locations(self, latlon: torch.Tensor) -> torch.Tensor:
        """GPS degrees -> unit location embeddings."""
        return F.normalize(self.location_encoder(latlon), dim=-1)

    def forward(self, features: torch.Tensor, latlon: torch.Tensor) -> torch.Tensor:
        """Logits (N_images, N_locations) = exp(logit_scale) * cos(image, location)."""
        # Scale after the matmul, as GeoCLIP does, so the rounding matches its logits.
        return self.logit_scale.exp() * (self.encode_images(features) @ self.encode_locations(latlon).T)
