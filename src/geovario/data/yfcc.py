"""YFCC4k / YFCC26k in the common CSV form: ``IMG_ID, LAT, LON, ...`` (no AUTHOR column).

IMG_ID is the file name; some releases omit the ``.jpg``, which is then added.
"""

from pathlib import Path

from geovario.data.csv_reader import CsvFormat


def _image_path(image_id: str, folder: Path) -> Path:
    path = folder / image_id
    if not path.suffix and not path.is_file():
        return path.with_name(path.name + ".jpg")
    return path


FORMAT = CsvFormat(
    name="yfcc",
    description="YFCC4k / YFCC26k: IMG_ID, LAT, LON, ...",
    id_column="IMG_ID",
    lat_column="LAT",
    lon_column="LON",
    signature=("img_id", "lat", "lon"),
    absent=("author",),
    image_path=_image_path,
)
