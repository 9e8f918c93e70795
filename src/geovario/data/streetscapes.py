"""NUS Global Streetscapes: ``uuid, lat, lon, city, country, ...``; images are named by uuid."""

from pathlib import Path

from geovario.data.csv_reader import CsvFormat
from geovario.data.image_index import find_by_stem


def _image_path(image_id: str, folder: Path) -> Path | None:
    return find_by_stem(image_id, folder, guesses=(f"{image_id}.jpeg", f"{image_id}.jpg"))


FORMAT = CsvFormat(
    name="streetscapes",
    description="NUS Global Streetscapes: uuid, lat, lon, city, country, ...",
    id_column="uuid",
    lat_column="lat",
    lon_column="lon",
    signature=("uuid", "lat", "lon"),
    meta_columns=("city", "country"),
    image_path=_image_path,
    id_is_path=False,
)
