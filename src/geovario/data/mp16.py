"""GeoCLIP / MP-16 training CSV: ``IMG_FILE, LAT, LON`` (GeoCLIP 1.3.0's GeoDataLoader)."""

from geovario.data.csv_reader import CsvFormat

FORMAT = CsvFormat(
    name="mp16",
    description="GeoCLIP / MP-16 CSV: IMG_FILE, LAT, LON",
    id_column="IMG_FILE",
    lat_column="LAT",
    lon_column="LON",
    signature=("img_file", "lat", "lon"),
    image_path=lambda image_id, folder: folder / image_id,
)
