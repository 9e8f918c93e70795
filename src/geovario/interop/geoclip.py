"""Import the released GeoCLIP 1.3.0 weights and gallery into a geovario model directory.

Sources, tried in this order unless one is named: a folder of release files (``--from``), a wheel
(``--wheel``), an installed ``geoclip`` package, and finally ``pip download geoclip==1.3.0``.
Every file is checked against the sha256 of the published release before it is used, and the
``.pth`` files are read with ``weights_only=True``, so nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from geovario.errors import GeovarioError
from geovario.hashing import sha256_bytes
from geovario.model import GeoLocModel, ModelConfig
from geovario.atomic import atomic_path, atomic_write_bytes, output_dir
from geovario.modeldir import DEFAULT_BACKBONE, GALLERY_FILE, read_gallery, save_model_dir, write_gallery_csv

GEOCLIP_VERSION = "1.3.0"

# sha256 of the files inside geoclip-1.3.0-py3-none-any.whl (PyPI), the published release.
RELEASE_SHA256 = {
    "location_encoder_weights.pth": "94b80ae3af89fca78539e129dd2929d321247f5ceeeb0a31bc2c31041a253394",
    "image_encoder_mlp_weights.pth": "5342c391eec961796d04d02f2bd670bfa97b34ce32c656d0e0676581103c2c14",
    "logit_scale_weights.pth": "9568e2e09dd19083082bf285b2c0c126867e40dbd275a8ee8c621888b861904e",
    "coordinates_100K.csv": "3a00b1ba58f13443db726533b6399b39609e292df09d4e58792fa5949d1838b1",
}

# Where each file sits inside the geoclip package (and so inside the wheel, under geoclip/).
PACKAGE_PATHS = {
    "location_encoder_weights.pth": "model/weights/location_encoder_weights.pth",
    "image_encoder_mlp_weights.pth": "model/weights/image_encoder_mlp_weights.pth",
    "logit_scale_weights.pth": "model/weights/logit_scale_weights.pth",
    "coordinates_100K.csv": "model/gps_gallery/coordinates_100K.csv",
}


@dataclass
class Release:
    files: dict[str, bytes]
    source: str


def _verified(files: dict[str, bytes], source: str) -> Release:
    for name, expected in RELEASE_SHA256.items():
        digest = sha256_bytes(files[name])
        if digest != expected:
            raise GeovarioError(
                f"{source}: {name} has sha256 {digest[:12]}…, not GeoCLIP {GEOCLIP_VERSION}'s {expected[:12]}…; "
                "refusing modified or corrupt weights"
            )
    return Release(files, source)


def read_release_folder(folder: str | Path) -> Release:
    """A flat folder of the release files, or a ``geoclip`` package folder (``model/weights/...``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GeovarioError(f"{folder}: folder not found")
    files = {}
    for name, package_path in PACKAGE_PATHS.items():
        for candidate in (folder / name, folder / package_path, folder / "geoclip" / package_path):
            if candidate.is_file():
                files[name] = candidate.read_bytes()
                break
        else:
            raise GeovarioError(f"{folder}: {name} not found (looked for {name} and {package_path})")
    return _verified(files, str(folder))


def read_release_wheel(wheel: str | Path) -> Release:
    wheel = Path(wheel)
    if not wheel.is_file():
        raise GeovarioError(f"{wheel}: wheel not found")
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            files = {}
            for name, package_path in PACKAGE_PATHS.items():
                member = f"geoclip/{package_path}"
                if member not in names:
                    raise GeovarioError(f"{wheel}: {member} not in the wheel; is this a geoclip {GEOCLIP_VERSION} wheel?")
                files[name] = archive.read(member)
    except (zipfile.BadZipFile, OSError) as e:
        raise GeovarioError(f"{wheel}: not a readable wheel ({e})") from None
    return _verified(files, str(wheel))


def installed_package_dir() -> Path | None:
    """The folder of an installed ``geoclip`` package, found without importing it."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def download_wheel(dest: str | Path, timeout: float = 300) -> Path:
    """``pip download --no-deps geoclip==1.3.0`` into ``dest``; returns the wheel path."""
    dest = Path(dest)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"geoclip=={GEOCLIP_VERSION}", "-d", str(dest), "--quiet", "--disable-pip-version-check"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GeovarioError(f"pip download geoclip=={GEOCLIP_VERSION} failed ({e}); use --wheel or --from") from None
    wheels = sorted(dest.glob(f"geoclip-{GEOCLIP_VERSION}-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel produced"])[-1]
        raise GeovarioError(f"pip download geoclip=={GEOCLIP_VERSION} failed ({last}); use --wheel or --from")
    return wheels[0]


def find_release(folder: str | Path | None = None, wheel: str | Path | None = None) -> Release:
    """Read the release from the named source, else an installed package, else PyPI."""
    if folder:
        return read_release_folder(folder)
    if wheel:
        return read_release_wheel(wheel)
    package = installed_package_dir()
    if package is not None:
        return read_release_folder(package)
    with tempfile.TemporaryDirectory() as tmp:
        release = read_release_wheel(download_wheel(tmp))
    return Release(release.files, f"PyPI geoclip=={GEOCLIP_VERSION} (pip download)")


def _load_pth(data: bytes, name: str):
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad archive
        raise GeovarioError(f"{name}: cannot load ({e})") from None


def convert_state_dicts(location: dict, image_mlp: dict, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rename GeoCLIP 1.3.0 keys to geovario's."""
    ours: dict[str, torch.Tensor] = {}
    capsule_to_mlp = {"1": "0", "3": "2", "5": "4"}  # Linear layers between GeoCLIP's ReLUs
    for key, value in location.items():
        branch, part, *rest = key.split(".")
        i = branch.removeprefix("LocEnc")
        if part == "capsule" and rest == ["0", "b"]:
            ours[f"location_encoder.branches.{i}.rff.b"] = value
        elif part == "capsule":
            ours[f"location_encoder.branches.{i}.mlp.{capsule_to_mlp[rest[0]]}.{rest[1]}"] = value
        elif part == "head":
            ours[f"location_encoder.branches.{i}.head.{rest[1]}"] = value
        else:
            raise GeovarioError(f"unexpected key {key!r} in GeoCLIP location encoder weights")
    for key, value in image_mlp.items():
        ours[f"image_head.mlp.{key}"] = value
    ours["logit_scale"] = logit_scale.reshape(())
    return ours


def geoclip_model(release: Release) -> GeoLocModel:
    """A geovario model holding GeoCLIP 1.3.0's weights."""
    location = _load_pth(release.files["location_encoder_weights.pth"], "location_encoder_weights.pth")
    image_mlp = _load_pth(release.files["image_encoder_mlp_weights.pth"], "image_encoder_mlp_weights.pth")
    logit_scale = _load_pth(release.files["logit_scale_weights.pth"], "logit_scale_weights.pth")
    model = GeoLocModel(ModelConfig())  # the defaults are GeoCLIP 1.3.0's shapes
    state = convert_state_dicts(location, image_mlp, logit_scale)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise GeovarioError(f"GeoCLIP weights do not map onto the model ({' '.join(str(e).split())[:300]})") from None
    return model.eval()


def write_geoclip_model_dir(out: str | Path, release: Release) -> Path:
    """Write GeoCLIP 1.3.0 as a geovario model directory with its 100K MP-16 gallery."""
    out = Path(out)
    output_dir(out)
    atomic_write_bytes(out / GALLERY_FILE, release.files["coordinates_100K.csv"])  # verbatim, sha-checked
    read_gallery(out / GALLERY_FILE)  # fail now, not at predict time, if it does not parse
    meta = {"source": {"name": "geoclip", "version": GEOCLIP_VERSION, "from": release.source, "license": "MIT"}}
    return save_model_dir(out, geoclip_model(release), backbone=DEFAULT_BACKBONE, meta=meta)


# --- Back to GeoCLIP ---------------------------------------------------------------------------------


def geoclip_state_dicts(model: GeoLocModel) -> tuple[dict, dict, torch.Tensor]:
    """geovario weights as GeoCLIP 1.3.0's three state dicts: the inverse of :func:`convert_state_dicts`."""
    location, image_mlp = {}, {}
    mlp_to_capsule = {"0": "1", "2": "3", "4": "5"}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().clone().contiguous()
        parts = key.split(".")
        if parts[0] == "location_encoder":
            i, part, rest = parts[2], parts[3], parts[4:]
            if part == "rff":
                location[f"LocEnc{i}.capsule.0.b"] = value
            elif part == "mlp":
                location[f"LocEnc{i}.capsule.{mlp_to_capsule[rest[0]]}.{rest[1]}"] = value
            else:
                location[f"LocEnc{i}.head.0.{rest[0]}"] = value
        elif parts[0] == "image_head":
            image_mlp[".".join(parts[2:])] = value
    return location, image_mlp, model.logit_scale.detach().cpu().clone().reshape(())


def geoclip_incompatibility(config: ModelConfig) -> str | None:
    """Why a model cannot be loaded by GeoCLIP's modules, whose shapes are fixed; None if it can."""
    ours, theirs = config.to_dict(), ModelConfig().to_dict()
    for key, value in theirs.items():
        if key != "init_logit_scale" and ours[key] != value:
            return f"its {key} is {ours[key]}, GeoCLIP's modules are built with {value}"
    return None


def _exportable(model_dir: str | Path):
    """The loaded model directory, refused in one line unless GeoCLIP's modules can hold it, with a gallery."""
    from geovario.modeldir import load_model_dir

    loaded = load_model_dir(model_dir)
    problem = geoclip_incompatibility(loaded.model.config)
    if problem:
        raise GeovarioError(f"{model_dir}: cannot be exported to GeoCLIP: {problem}")
    if loaded.gallery_path is None:
        raise GeovarioError(f"{model_dir}: has no gallery; GeoCLIP needs one (coordinates_100K.csv)")
    return loaded


def export_geoclip(model_dir: str | Path, out: str | Path) -> Path:
    """Write a geovario model as GeoCLIP 1.3.0's release files: three ``.pth`` state dicts and the gallery CSV.

    GeoCLIP loads them with ``weights_only=True``; its gallery file is ``coordinates_100K.csv`` with a
    ``LAT,LON`` header, whatever the number of rows.
    """
    loaded = _exportable(model_dir)
    out = Path(out)
    output_dir(out)
    location, image_mlp, logit_scale = geoclip_state_dicts(loaded.model)
    for name, value in (("location_encoder_weights.pth", location), ("image_encoder_mlp_weights.pth", image_mlp),
                        ("logit_scale_weights.pth", logit_scale)):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        atomic_write_bytes(out / name, buffer.getvalue())
    gallery = loaded.gallery_path.read_bytes()
    if gallery.splitlines()[0].strip() == b"LAT,LON":  # already GeoCLIP's format: copied verbatim, digits and all
        atomic_write_bytes(out / "coordinates_100K.csv", gallery)
    else:
        write_gallery_csv(out / "coordinates_100K.csv", read_gallery(loaded.gallery_path))
    return out


HUB_MODEL_TYPE = "geoclip-geolocation"  # GeoCLIP 1.3.0's geoclip/model/_hub.py read_release: config.json's model_type
HUB_BACKBONE = "openai/clip-vit-large-patch14"


def export_geoclip_hub(model_dir: str | Path, out: str | Path, backbone_revision: str = "main") -> Path:
    """Write a geovario model in GeoCLIP's newer hub layout, which ``GeoCLIP.from_pretrained(out)`` loads:
    ``config.json`` (model_type, format_version 1, the RFF sigmas, the gallery file, the CLIP backbone's hub id and
    revision), ``model.safetensors`` (``logit_scale``, ``location_encoder.*``, ``image_encoder.mlp.*``, the keys
    of GeoCLIP's own modules) and the gallery CSV. The backbone is the model's when it is a hub id, else CLIP
    ViT-L/14's (GeoCLIP fetches it from the hub by that id)."""
    from safetensors.torch import save_file

    loaded = _exportable(model_dir)
    out = output_dir(Path(out))
    location, image_mlp, logit_scale = geoclip_state_dicts(loaded.model)
    tensors = {"logit_scale": logit_scale, **{f"location_encoder.{k}": v for k, v in location.items()},
               **{f"image_encoder.mlp.{k}": v for k, v in image_mlp.items()}}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_gallery_csv(out / "coordinates_100K.csv", read_gallery(loaded.gallery_path))
    name = str(loaded.backbone or "")
    repo_id = name if name.count("/") == 1 and not Path(name).exists() else HUB_BACKBONE
    config = {"model_type": HUB_MODEL_TYPE, "format_version": 1, "sigma": [float(s) for s in loaded.model.config.sigmas],
              "gallery_file": "coordinates_100K.csv", "backbone": {"repo_id": repo_id, "revision": backbone_revision}}
    atomic_write_bytes(out / "config.json", (json.dumps(config, indent=1) + "\n").encode())
    return out


# --- The reference implementation, for parity tests and benchmarks -------------------------------


class _FeaturesPassThrough(torch.nn.Module):
    """Stands in for GeoCLIP's CLIPModel so that its image encoder takes backbone features directly."""

    def get_image_features(self, pixel_values):
        return pixel_values


@contextlib.contextmanager
def geoclip_package(site_dir: str | Path):
    """Import GeoCLIP 1.3.0's modules from an unpacked wheel at ``site_dir`` (yields ``importlib.import_module``)
    without running its package ``__init__`` (which pulls torchvision for training); ``sys.modules`` is as it was
    afterwards."""
    root = Path(site_dir) / "geoclip"
    saved = {k: v for k, v in sys.modules.items() if k == "geoclip" or k.startswith("geoclip.")}
    try:
        for name, path in (("geoclip", root), ("geoclip.model", root / "model")):
            module = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(name, None, is_package=True))
            module.__path__ = [str(path)]
            sys.modules[name] = module
        yield importlib.import_module
    finally:
        for key in [k for k in sys.modules if k == "geoclip" or k.startswith("geoclip.")]:
            del sys.modules[key]
        sys.modules.update(saved)


def reference_geoclip(site_dir: str | Path):
    """GeoCLIP 1.3.0's own ``GeoCLIP`` module, loaded from an unpacked wheel at ``site_dir``.

    Only its image encoder's CLIP is replaced by a pass-through, so its ``forward(features, gps)``
    is GeoCLIP's own code path from backbone features to logits.
    """
    with geoclip_package(site_dir) as import_module:
        image_encoder = import_module("geoclip.model.image_encoder")
        image_encoder.CLIPConfig = lambda **kwargs: None
        image_encoder.CLIPModel = lambda config: _FeaturesPassThrough()
        image_encoder.CLIPImageProcessor = lambda: None
        return import_module("geoclip.model.GeoCLIP").GeoCLIP(from_pretrained=True, clip_pretrained=False).eval()


def unpack_wheel(wheel: str | Path, dest: str | Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(dest)
    return Path(dest)
