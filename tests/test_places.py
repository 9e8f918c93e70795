from geovario.places import Place, place_names


def test_place_names_offline():
    paris, kauai, ocean_near_tokyo = place_names([(48.8584, 2.2945), (22.0704, -159.6618), (35.6, 139.9)])
    assert paris.country == "FR" and paris.region == "Ile-de-France"
    assert kauai.country == "US" and kauai.region == "Hawaii" and kauai.subregion == "Kauai County"
    assert ocean_near_tokyo.country == "JP"
    assert str(Place("Waimea", "Kauai County", "Hawaii", "US")) == "Waimea, Hawaii, US"
    assert place_names([]) == []
