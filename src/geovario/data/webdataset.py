"""webdataset tar shards that carry their own coordinates: ``KEY.jpg`` beside ``KEY.json``.

The JSON holds ``lat``/``latitude`` and ``lon``/``lng``/``longitude``. Shards whose labels live in a
CSV instead are read as that CSV's format, with ``--images`` pointing at the shards' folder: members
are then found by key.
"""

from __future__ import annotations

import math
from pathlib import Path

from geovario.data.archives import Listing, archives_in
from geovario.data.archives.tar_shards import list_members, read_json, webdataset_key
from geovario.data.latlon_csv import LAT_NAMES, LON_NAMES, as_coordinate
from geovario.data.records import Dataset, Problem, Record
from geovario.errors import GeovarioError


def shards(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = [p for p in archives_in(path) if p.suffix.lower() == ".tar"]
    if not found:
        raise GeovarioError(f"{path}: no .tar shards")
    return found


def _coordinate(value: dict, names: tuple[str, ...]):
    return next((value[k] for k in value if k.lower() in names), None)


def read_webdataset(path: Path) -> Dataset:
    listing = Listing()
    for shard in shards(path):
        listing.extend(list_members(shard))
    records, problems, seen, n_rows = [], list(listing.problems), {}, 0
    # A label whose image is missing is a sample lost too: counted and reported, not passed over.
    imaged = {webdataset_key(m.name) for m in listing.members} | {webdataset_key(p.file.rsplit(":", 1)[-1]) for p in listing.problems}
    for key, sidecar in listing.sidecars.items():
        if key not in imaged:
            n_rows += 1
            problems.append(Problem(str(sidecar), 0, f"a label without its image (no {key}.jpg or other image beside it)", "missing image"))
    for member in listing.members:
        n_rows += 1
        key = webdataset_key(member.name)
        where = str(member)
        if key in seen:
            problems.append(Problem(where, 0, f"duplicate key {key!r} (first in {seen[key]})", "duplicate member"))
            continue
        sidecar = listing.sidecars.get(key)
        if sidecar is None or sidecar.archive != member.archive:
            problems.append(Problem(where, 0, f"no {key}.json with lat and lon beside it", "missing label"))
            continue
        try:
            label = read_json(sidecar)
        except GeovarioError as e:
            problems.append(Problem(str(sidecar), 0, str(e).removeprefix(f"{sidecar}: "), "bad label"))
            continue
        lat, lon = _coordinate(label, LAT_NAMES), _coordinate(label, LON_NAMES)
        try:
            lat, lon = as_coordinate(lat), as_coordinate(lon)
        except (TypeError, ValueError):
            problems.append(Problem(str(sidecar), 0, f"lat {lat!r} / lon {lon!r} missing or not numbers", "non-numeric"))
            continue
        if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
            problems.append(Problem(str(sidecar), 0, f"lat/lon out of range or not finite (lat={lat}, lon={lon})", "bad coordinates"))
            continue
        seen[key] = where
        meta = {k: str(v) for k, v in label.items() if isinstance(v, (str, int, float)) and k.lower() in ("country", "region", "city")}
        records.append(Record(key, member, lat, lon, meta, 0))
    return Dataset(path, "webdataset", records, problems, n_rows=n_rows)
