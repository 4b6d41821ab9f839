"""/docs (Swagger UI) and /redoc (ReDoc), served with their JavaScript, CSS and favicon from the
service itself, so both pages work on a machine without internet (FastAPI's defaults load them
from a CDN and leave a blank page offline). The assets come from the `fastapi-offline` package's
static folder and are served from a fixed list of names at /docs/assets/NAME (no directory is
exposed). Swagger UI's online validator badge is turned off, and a Content-Security-Policy keeps
the browser on this host (ReDoc's side menu would otherwise fetch a logo from its vendor's CDN).

Like /openapi.json, the pages and their assets are open: they show the API's shape, never data.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

from .errors import UnknownName

ASSETS_PATH = "/docs/assets"
ASSETS = {  # name -> media type
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# Only this service: the pages' inline start-up script and styles, ReDoc's search worker (blob:)
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")


def _page(html: HTMLResponse) -> HTMLResponse:
    html.headers["Content-Security-Policy"] = CSP
    return html


def asset_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def add_docs_routes(app: FastAPI) -> None:
    """GET /docs, /redoc, /docs/oauth2-redirect and /docs/assets/NAME. Create the app with
    docs_url=None and redoc_url=None (FastAPI's own pages point at a CDN)."""
    folder = asset_dir()
    missing = [n for n in ASSETS if not (folder / n).is_file()]
    if missing:
        raise RuntimeError(f"the API docs' assets {missing} are not in {folder}; pip install fastapi-offline")

    def assets(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_PATH}"

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root, a = request.scope.get("root_path", ""), assets(request)
        return _page(get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{a}/swagger-ui-bundle.js", swagger_css_url=f"{a}/swagger-ui.css",
            swagger_favicon_url=f"{a}/favicon.png", oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT}",
            swagger_ui_parameters={"validatorUrl": None}))  # no badge fetched from validator.swagger.io

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root, a = request.scope.get("root_path", ""), assets(request)
        return _page(get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                                    redoc_js_url=f"{a}/redoc.standalone.js", redoc_favicon_url=f"{a}/favicon.png",
                                    with_google_fonts=False))

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise UnknownName(f"no docs asset {name!r}", code="http_404")
        return FileResponse(folder / name, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
