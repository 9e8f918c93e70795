"""`geovario serve`: a local web page that geolocates a dropped photo (FastAPI + uvicorn + Leaflet)."""

from geovario.serve.service import GeoService, ServeSettings, UploadError

__all__ = ["GeoService", "ServeSettings", "UploadError", "create_app"]


def create_app(service: GeoService):
    from geovario.serve.app import create_app as build

    return build(service)
