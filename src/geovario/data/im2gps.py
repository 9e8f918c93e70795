"""im2gps / im2gps3k: ``IMG_ID, AUTHOR, LAT, LON, ...`` where IMG_ID is the image file name."""

from geovario.data.csv_reader import CsvFormat

FORMAT = CsvFormat(
    name="im2gps",
    description="im2gps / im2gps3k: IMG_ID, AUTHOR, LAT, LON, ...",
    id_column="IMG_ID",
    lat_column="LAT",
    lon_column="LON",
    signature=("img_id", "author", "lat", "lon"),
    meta_columns=("AUTHOR",),
    image_path=lambda image_id, folder: folder / image_id,
)
