"""OSV5M: ``id, latitude, longitude, country, region, sub-region, city, ...``.

Images sit at ``images/<split>/NN/<id>.jpg``, where NN is the archive the image shipped in and
cannot be derived from the id, so images are found by one walk of the folder. The admin labels
are kept for admin-level accuracy.
"""

from pathlib import Path

from geovario.data.csv_reader import CsvFormat
from geovario.data.image_index import find_by_stem


def _image_path(image_id: str, folder: Path) -> Path | None:
    return find_by_stem(image_id, folder, guesses=(f"{image_id}.jpg",))


FORMAT = CsvFormat(
    name="osv5m",
    description="OSV5M: id, latitude, longitude, country, region, sub-region, city, ...",
    id_column="id",
    lat_column="latitude",
    lon_column="longitude",
    signature=("id", "latitude", "longitude"),
    meta_columns=("country", "region", "sub-region", "city"),
    image_path=_image_path,
    id_is_path=False,
)
