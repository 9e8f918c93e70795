"""geovario: worldwide image geolocalization in the GeoCLIP family.

The library is importable piece by piece; the ``geovario`` command in :mod:`geovario.cli`
only parses arguments and calls it.
"""

__version__ = "0.1.0"

from geovario.errors import GeovarioError

__all__ = ["GeovarioError", "__version__"]
