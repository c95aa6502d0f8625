"""The web UI at ``/gui``: the files built from ``gui/`` (Vue and Kong's Kongponents, by ``npm run build``) and
shipped in the package as ``isthmus/gui_dist``, so running the control plane never needs node.

``/gui/assets/*`` are served with a year's caching (their names carry a content hash); any other path under
``/gui`` is the single-page application's ``index.html`` (its router reads the path). The files hold no data:
they are served without credentials (see ``auth.AuthMiddleware``); the UI reads the API with the user's token.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from isthmus.cp.api.errors import ApiError

PREFIX = "/gui"
IMMUTABLE = "public, max-age=31536000, immutable"
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".woff2": "font/woff2"}


def default_root() -> Path:
    return Path(str(resources.files("isthmus") / "gui_dist"))


def _file(root: Path, relative: str) -> Path | None:
    """The file ``relative`` under ``root``; None when it is not one (or leaves ``root``)."""
    if not relative or "\x00" in relative:
        return None
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def build_router(root: Path | None = None) -> APIRouter:
    base = (root or default_root()).resolve()
    router = APIRouter(include_in_schema=False)

    def index() -> Response:
        page = base / "index.html"
        if not page.is_file():
            raise ApiError(
                404,
                "Not Found",
                "the web UI is not built into this installation (npm run build in gui/, see scripts/dev)",
            )
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @router.get(PREFIX)
    async def gui_root() -> Response:
        return RedirectResponse(PREFIX + "/", status_code=308)

    @router.get(PREFIX + "/{path:path}")
    async def gui_file(path: str) -> Response:
        found = _file(base, path)
        if found is None:
            if path.startswith("assets/"):
                raise ApiError(404, "Not Found", f"no such file: {PREFIX}/{path}")
            return index()
        media = TYPES.get(found.suffix) or mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        cache = IMMUTABLE if path.startswith("assets/") else "no-cache"
        return FileResponse(found, media_type=media, headers={"Cache-Control": cache})

    return router
