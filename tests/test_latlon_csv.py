"""LAT/LON CSVs (galleries, --gps): the radians warning on both readers, the strict reader's messages, JSON numbers."""
import warnings

import numpy as np
import pytest

from geovario.data import latlon_csv
from geovario.errors import GeovarioError, GeovarioWarning


def _radians_csv(path, blank_line: bool):
    """Radians-like values: |lat| up to 1.2 (<= pi/2), |lon| up to 2.5 (> pi/2, <= pi)."""
    lat, lon = np.linspace(-1.2, 1.2, 12), np.linspace(2.5, -2.5, 12)
    rows = [f"{float(a)!r},{float(b)!r}" for a, b in zip(lat, lon)]
    if blank_line:  # a blank line sends the file to the strict reader
        rows.insert(5, "")
    path.write_text("LAT,LON\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("blank_line", [False, True], ids=["clean path", "strict path"])
def test_coordinates_that_look_like_radians_warn_on_either_reader(tmp_path, blank_line):
    path = tmp_path / "g.csv"
    _radians_csv(path, blank_line)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (latlon_csv._clean_numbers(path, "gallery") is None) == blank_line  # which reader reads it
    with pytest.warns(GeovarioWarning, match=r"g.csv: every one of the 12 points lies within pi of \(0, 0\) \(\|lat\| <= 1.2, \|lon\| <= 2.5\)"):
        latlon_csv.read_latlon_csv(path, "gallery")


def test_degrees_do_not_warn(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("LAT,LON\n" + "\n".join(f"{a},{b}" for a, b in zip(range(-60, 60, 10), range(-170, 170, 28))) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latlon_csv.read_latlon_csv(path).shape == (12, 2)


def test_the_strict_reader_quotes_the_cells_as_written_and_counts_the_other_bad_rows(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("LAT,LON\n1,2\nNA,4\n")  # "NA" is a cell to quote, not a missing value
    with pytest.raises(GeovarioError, match=r"g.csv: line 3: .*\['NA', '4'\]$"):
        latlon_csv.read_latlon_csv(path)
    path.write_text("LAT,LON\n1,2\n\n\n5,6\n91,4\n")  # blank lines are skipped, and still counted in the line number
    with pytest.raises(GeovarioError, match=r"g.csv: line 6: latitude 91.0 is outside"):
        latlon_csv.read_latlon_csv(path)
    path.write_text("LAT,LON\n1,2\n91,4\n3,x\n-95,0\n")
    with pytest.raises(GeovarioError, match=r"line 3: latitude 91.0 is outside .*\['91', '4'\] \(2 more bad rows\)$"):
        latlon_csv.read_latlon_csv(path)
    path.write_text("LAT,LON\n1,2\n91,4\n-95,0\n")
    with pytest.raises(GeovarioError, match=r"line 3: latitude 91.0 is outside .*\['91', '4'\] \(1 more bad rows\)$"):
        latlon_csv.read_latlon_csv(path)


def test_a_coordinate_from_json_is_a_number_and_never_a_boolean():
    assert latlon_csv.as_coordinate(2) == 2.0 and latlon_csv.as_coordinate("48.5") == 48.5
    for value in (True, False, None):
        with pytest.raises(TypeError, match="is not a number"):
            latlon_csv.as_coordinate(value)
    with pytest.raises(ValueError):
        latlon_csv.as_coordinate("north")
