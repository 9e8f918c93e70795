"""geovario: worldwide image geolocalization in the GeoCLIP family.

    import geovario
    places = geovario.load("geoclip").predict("photo.jpg", top_k=5)   # see geovario.api

The library is importable piece by piece; the ``geovario`` command in :mod:`geovario.cli`
only parses arguments and calls it.
"""

__version__ = "0.1.0"

from geovario.errors import GeovarioError


def load(model="geoclip", **options):
    """A :class:`geovario.api.Geolocator` for a model directory or ``"geoclip"`` (see :func:`geovario.api.load`);
    importing ``geovario`` itself stays light, torch loads here."""
    from geovario.api import load as _load

    return _load(model, **options)


__all__ = ["GeovarioError", "__version__", "load"]
