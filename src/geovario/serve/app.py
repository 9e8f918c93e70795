"""The HTTP side of `geovario serve`: FastAPI routes, the upload size limit and the static page.

    GET  /              the page (static/index.html)
    GET  /api/health    model, gallery size and limits, as JSON
    POST /api/predict   multipart field "file" (an image); ?top_k=N; ?heat=true adds the map's shading (the most
                        probable gallery points, [lat, lon, log10 p]); JSON answer or {"detail": why}
    POST /api/predict-text  JSON {"text": ..., "top_k": N}: a text query, same answer without image and EXIF
    GET  /openapi.json  the API's schema
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from geovario import __version__
from geovario.serve.service import GeoService, UploadError

STATIC = Path(__file__).resolve().parent / "static"


class TextQuery(BaseModel):
    text: str = Field(..., description='a description of the place, e.g. "a snowy street with red trams"')
    top_k: int | None = Field(None, description="how many places to return (default: the server's --top-k)")


class _TooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: answer 413 to a request body over ``max_bytes``, before it is all read.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives, so no upload can fill memory or the temp dir beyond the limit.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        refusal = JSONResponse({"detail": f"upload too large: the limit is {self.max_bytes / 2**20:g} MB"}, status_code=413)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await refusal(scope, receive, send)
        received, overflowed, refused = 0, False, False

        async def counted_receive():
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflowed = True
                    raise _TooLarge
            return message

        async def refuse_once():
            nonlocal refused
            if not refused:
                refused = True
                await refusal(scope, receive, send)

        async def guarded_send(message):
            # The app may catch the overflow and answer 400 for a broken body: answer 413 instead.
            if overflowed:
                if message["type"] == "http.response.start":
                    await refuse_once()
                return
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            await refuse_once()


def create_app(service: GeoService) -> FastAPI:
    settings = service.settings
    # No Swagger/ReDoc pages: FastAPI loads them from a CDN, and this server works offline; the schema
    # itself is at /openapi.json.
    app = FastAPI(title="geovario", version=__version__, description="Drop a photo, see where it was taken.",
                  docs_url=None, redoc_url=None)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, **service.info()}

    @app.post("/api/predict")
    def predict(file: UploadFile = File(..., description="a photo: JPEG, PNG, WebP, GIF, BMP or TIFF"),
                top_k: int | None = Query(None, description="how many places to return (default: the server's --top-k)"),
                heat: bool = Query(False, description="also return the probability over the gallery for the map's shading")) -> dict:
        # A plain def: FastAPI runs it in a worker thread, so decoding and the forward pass never block the loop.
        data = file.file.read()
        try:
            return service.predict(data, file.filename or "upload", file.content_type, top_k, heat)
        except UploadError as e:
            raise HTTPException(e.status, str(e)) from None

    @app.post("/api/predict-text")
    def predict_text(query: TextQuery) -> dict:
        """Geolocate a text query: CLIP's text embedding through the image head (see the README for how well)."""
        try:
            return service.predict_text(query.text, query.top_k)
        except UploadError as e:
            raise HTTPException(e.status, str(e)) from None

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:  # for clients that ask for it without reading the page's <link rel="icon">
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/config.js", include_in_schema=False)
    def page_config() -> Response:
        config = {"tiles": settings.tiles, "topK": settings.top_k, "maxUploadBytes": settings.max_upload_bytes}
        return Response(f"window.GEOVARIO = {json.dumps(config)};\n", media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
