"""Geolocate a whole folder of photos into one file, written as it goes and resumable.

The folder is walked recursively for image files (by suffix: .jpg, .jpeg, .png, .webp, .tif, .tiff, .bmp), in the
order of their relative paths, so a rerun sees the same order. Photos are predicted in chunks; after each chunk its
records are appended to a journal beside the output (``OUT.partial.jsonl``) and flushed to disk, so a kill loses at
most the chunk being encoded. The journal's first line holds the settings (weights and gallery sha256, temperature
and Platt coefficients, top-k, pooling, level, test-time augmentation, folder): ``resume=True`` reads it back, refuses other settings, and skips the photos already
there, after checking that each of them is still the same file (its size). Once every photo is done the journal is rendered into the output's format, atomically, and removed:

- ``.jsonl``: one object per photo: ``input``, ``predictions`` (or ``error``), ``exif`` and ``error_km``;
- ``.csv``: one row per photo and rank (pandas), confidence columns beside each place; a photo that could not be
  read is one row with its ``error``;
- ``.geojson``: a FeatureCollection (written and validated with the ``geojson`` package): one Feature per photo, its
  best place as a Point, the ranked places and the EXIF error in its properties; with ``regions``, one more Feature
  per photo, the confidence circle (``radius_km`` around the best place) as a Polygon of 64 geodesic points
  (geographiclib, on WGS84);
- ``.kml``: a Placemark per photo (ElementTree), the same description, and the circle where asked.

A photo with EXIF GPS gets ``exif`` (its true position) and ``error_km`` (the best place's distance from it), as
the page shows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from geovario.confidence_defaults import LEVEL, POOL_KM
from geovario.data.image_index import IMAGE_SUFFIXES
from geovario.errors import GeovarioError

FORMATS = (".csv", ".jsonl", ".geojson", ".kml")
CIRCLE_POINTS = 64


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, by suffix), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GeovarioError(f"{folder}: not a folder")
    return sorted((Path(root) / name for root, _dirs, files in os.walk(folder) for name in files
                   if Path(name).suffix.lower() in IMAGE_SUFFIXES), key=lambda p: str(p.relative_to(folder)))


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


@dataclass
class FolderResult:
    out: Path
    images: int
    predicted: int = 0
    resumed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, why)


def predict_folder(predictor, folder: str | Path, out: str | Path, top_k: int = 5, pool_km: float | None = POOL_KM,
                   level: float = LEVEL, backbone: str | None = None, batch_size: int = 32, workers: int = 0,
                   resume: bool = False, regions: bool = False, progress: bool = True, tta: str = "none") -> FolderResult:
    """Predict every photo under ``folder`` into ``out`` (see the module); a photo that cannot be read is listed in
    ``failed``, never dropped."""
    from geovario.progress import progress as progress_bar

    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise GeovarioError(f"{out}: the output must end in {', '.join(FORMATS)}")
    images = list_images(folder)
    settings = {"folder": str(Path(folder).resolve()), "weights_sha256": predictor.weights_sha256,
                "gallery_sha256": _gallery_sha256(predictor), "temperature": predictor.temperature,
                "platt": predictor.platt, "top_k": top_k,
                "pool_km": pool_km, "level": level, "backbone": backbone, "tta": tta}
    journal = journal_path(out)
    done = _open_journal(journal, settings, resume, out)
    result = FolderResult(out, len(images), resumed=len(done))
    todo = [path for path in images if str(path) not in done]
    chunk = batch_size * max(1, workers)
    with progress_bar(len(images), "geolocating", "img", enabled=progress, initial=len(images) - len(todo)) as bar, \
            open(journal, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), chunk):
            paths = todo[start : start + chunk]
            found = predictor.predict_images([str(p) for p in paths], top_k, backbone, batch_size, workers, pool_km, level, tta)
            for path, places in zip(paths, found):
                f.write(json.dumps(image_record(path, places) | {"bytes": path.stat().st_size}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(paths))
    records = [{k: v for k, v in record.items() if k != "bytes"} for record in _read_journal(journal)[1]]
    for record in records:
        if "error" in record:
            result.failed.append((record["input"], record["error"]))
    result.predicted = len(records) - len(result.failed)
    _render(records, out, regions)
    journal.unlink()
    return result


def _gallery_sha256(predictor) -> str:
    from geovario.calibration import gallery_sha256

    return gallery_sha256(predictor.gallery)


def _open_journal(journal: Path, settings: dict, resume: bool, out: Path) -> set[str]:
    """The inputs already done; a new journal is started (with its settings line) unless resuming one."""
    from geovario.atomic import output_dir

    output_dir(out.parent if str(out.parent) else Path("."))
    if journal.is_file() and resume:
        data = journal.read_bytes()
        if data and not data.endswith(b"\n"):  # a last line a kill cut short: dropped, its photo is predicted again
            with journal.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        header, records = _read_journal(journal)
        if header != settings:
            changed = sorted(k for k in settings.keys() | header.keys() if settings.get(k) != header.get(k))
            raise GeovarioError(f"{journal}: made with other settings ({', '.join(changed)} differ); rerun without --resume "
                                "to start again")
        for record in records:  # a photo done before must be the same file now
            path = Path(record["input"])
            if not path.is_file() or path.stat().st_size != record.get("bytes"):
                raise GeovarioError(f"{path}: changed or gone since the run that was cut short; rerun without --resume to start again")
        return {record["input"] for record in records}
    if journal.is_file():
        raise GeovarioError(f"{journal}: a folder prediction was cut short here; add --resume to continue it, or remove the file")
    if resume:
        raise GeovarioError(f"{journal}: nothing to resume (no journal of an earlier run)")
    journal.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
    return set()


def _read_journal(journal: Path) -> tuple[dict, list[dict]]:
    """The settings and the records; a damaged line is refused by number."""
    lines = journal.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0])["settings"]
    except (IndexError, ValueError, KeyError, TypeError):
        raise GeovarioError(f"{journal}: not a geovario prediction journal (its first line holds no settings)") from None
    records = []
    for number, line in enumerate(lines[1:], 2):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise GeovarioError(f"{journal}:{number}: damaged line; remove the journal to start again") from None
    return header, records


def image_record(path: Path, places) -> dict:
    """One photo's record: its places (or why it could not be read) and, with EXIF GPS, the truth and the error."""
    if isinstance(places, str):
        return {"input": str(path), "error": places}
    record = {"input": str(path), "predictions": [p.to_dict() for p in places], "exif": None, "error_km": None}
    truth = _exif(path)
    if truth is not None and places:
        from geovario.geo import haversine_km

        record["exif"] = {"lat": truth[0], "lon": truth[1]}
        record["error_km"] = float(haversine_km(truth[0], truth[1], places[0].lat, places[0].lon))
    return record


def _exif(path: Path) -> tuple[float, float] | None:
    from geovario.data.exif_folder import read_exif_gps
    from geovario.geo import coordinate_problems

    try:
        found = read_exif_gps(path)
    except Exception:  # broken EXIF: the photo is still predicted, it just has no truth to compare with
        return None
    if found is None or coordinate_problems([found[0]], [found[1]]):
        return None
    return found


def _render(records: list[dict], out: Path, regions: bool) -> None:
    from geovario.atomic import atomic_write_bytes

    suffix = out.suffix.lower()
    if suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    elif suffix == ".csv":
        text = _csv(records)
    elif suffix == ".geojson":
        text = _geojson(records, regions)
    else:
        text = _kml(records, regions)
    atomic_write_bytes(out, text.encode("utf-8"))


def _csv(records: list[dict]) -> str:
    import pandas as pd

    rows = []
    for r in records:
        base = {"input": r["input"], "exif_lat": (r.get("exif") or {}).get("lat"), "exif_lon": (r.get("exif") or {}).get("lon"),
                "error_km": r.get("error_km"), "error": r.get("error")}
        if "error" in r:
            rows.append(base)
        for rank, p in enumerate(r.get("predictions", []), 1):
            rows.append({"input": r["input"], "rank": rank, "lat": p["lat"], "lon": p["lon"], "prob": p["prob"],
                         **{f"within_{t}km": v for t, v in p["within_km"].items()}, "radius_km": p["radius_km"], "level": p["level"],
                         **{k: v for k, v in base.items() if k != "input"}})
    return pd.DataFrame(rows).to_csv(index=False)


def circle(lat: float, lon: float, radius_km: float, points: int = CIRCLE_POINTS) -> list[tuple[float, float]]:
    """(lon, lat) points of the geodesic circle of ``radius_km`` around (lat, lon) on WGS84, closed (first = last)."""
    from geographiclib.geodesic import Geodesic

    ring = []
    for k in range(points):
        step = Geodesic.WGS84.Direct(lat, lon, 360.0 * k / points, 1000.0 * radius_km)
        ring.append((step["lon2"], step["lat2"]))
    return ring + ring[:1]


def _geojson(records: list[dict], regions: bool) -> str:
    import geojson

    features = []
    for r in records:
        if "error" in r or not r["predictions"]:
            continue
        best = r["predictions"][0]
        properties = {"input": r["input"], "rank": 1, "prob": best["prob"], "within_km": best["within_km"],
                      "radius_km": best["radius_km"], "level": best["level"], "places": r["predictions"],
                      "exif": r.get("exif"), "error_km": r.get("error_km")}
        features.append(geojson.Feature(geometry=geojson.Point((best["lon"], best["lat"])), properties=properties))
        if regions:
            polygon = geojson.Polygon([circle(best["lat"], best["lon"], best["radius_km"])])
            features.append(geojson.Feature(geometry=polygon, properties={"input": r["input"], "region": True,
                                                                         "radius_km": best["radius_km"], "level": best["level"]}))
    collection = geojson.FeatureCollection(features)
    if not collection.is_valid:
        raise GeovarioError(f"internal error: invalid GeoJSON ({collection.errors()})")
    return geojson.dumps(collection, indent=1)


def _kml(records: list[dict], regions: bool) -> str:
    import xml.etree.ElementTree as ET

    kml = ET.Element("kml", xmlns="http://www.opengis.net/kml/2.2")
    document = ET.SubElement(kml, "Document")
    for r in records:
        if "error" in r or not r["predictions"]:
            continue
        best = r["predictions"][0]
        mark = ET.SubElement(document, "Placemark")
        ET.SubElement(mark, "name").text = Path(r["input"]).name
        lines = [f"{rank}. {p['lat']:.5f}, {p['lon']:.5f}: p = {p['prob']:.4f}, {100 * p['level']:g} % within {p['radius_km']:,.0f} km"
                 for rank, p in enumerate(r["predictions"], 1)]
        if r.get("error_km") is not None:
            lines.append(f"EXIF GPS {r['exif']['lat']:.5f}, {r['exif']['lon']:.5f}: {r['error_km']:,.1f} km off")
        ET.SubElement(mark, "description").text = r["input"] + "\n" + "\n".join(lines)
        point = ET.SubElement(mark, "Point")
        ET.SubElement(point, "coordinates").text = f"{best['lon']},{best['lat']}"
        if regions:
            area = ET.SubElement(document, "Placemark")
            ET.SubElement(area, "name").text = f"{Path(r['input']).name}: {100 * best['level']:g} % region"
            ring = ET.SubElement(ET.SubElement(ET.SubElement(ET.SubElement(area, "Polygon"), "outerBoundaryIs"), "LinearRing"),
                                 "coordinates")
            ring.text = " ".join(f"{lon},{lat}" for lon, lat in circle(best["lat"], best["lon"], best["radius_km"]))
    ET.indent(kml)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(kml, encoding="unicode") + "\n"
