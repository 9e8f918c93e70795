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
