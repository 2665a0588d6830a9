"""The API reference at /docs, served whole by the API itself: Swagger UI's files come from the openapi-ui-bundles
package (Apache-2.0; Swagger UI 5.17, which reads the OpenAPI 3.1 FastAPI writes, unlike the 4.x of
swagger-ui-bundle), not from a CDN, so the page works on a host without internet access.

Only the files the page loads are served (a fixed list, not the package's folder). They are behind the same door as
/docs and /openapi.json: with COHERENCE_API_TOKEN set, the bearer token or a console session. ReDoc is not served:
one reference is enough. /docs has a Content-Security-Policy of its own (the console's would block the inline
initializer FastAPI writes): nothing from another origin, that one inline script by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from openapi_ui_bundles.swagger_ui import static_path as swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})
ASSET_CACHE_SECONDS = 86400  # the files change only with the package: a browser keeps them a day


def install(app: FastAPI) -> None:
    """/docs and its assets on ``app`` (created with ``docs_url=None, redoc_url=None``)."""

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - reference",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # its badge is an image from validator.swagger.io
        )
        page.headers["Content-Security-Policy"] = _policy(bytes(page.body))
        return page

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def swagger_asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, f"no such file: {name[:100]}")
        return FileResponse(swagger_ui_path / name,
                            headers={"Cache-Control": f"private, max-age={ASSET_CACHE_SECONDS}"})


def _policy(page: bytes) -> str:
    """The browser itself refuses anything from elsewhere; the page's one inline script (FastAPI's Swagger UI
    initializer) runs by its hash. Swagger UI sets inline styles, hence 'unsafe-inline' for styles only."""
    inline = re.search(rb"<script>(.*?)</script>", page, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.group(1) if inline else b"").digest()).decode()
    return (f"default-src 'none'; script-src 'self' 'sha256-{digest}'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
