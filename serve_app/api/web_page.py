"""The talk page: `GET /` and its static files under `/ui/` (`serve_app/web/`: plain HTML, CSS and ES
modules, nothing fetched from elsewhere at run time).

The page holds no secret, so it is served without a credential; it asks the user for a key when the
server wants one and sends it in the WebSocket subprotocol (see `serve_app.api.auth`), never in a URL.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Everything from this origin only: scripts, styles, worklets, and the WebSocket back to this server
# ('self' covers ws:/wss: to the same host in CSP Level 3).
CONTENT_SECURITY_POLICY = "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


async def index(request: Request) -> Response:
    return FileResponse(
        WEB_DIR / "index.html",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",  # a new version of the page shows on reload
        },
    )


def page_routes() -> list[BaseRoute]:
    """`GET /` (the page) and `GET /ui/<file>` (its scripts, worklets and styles)."""
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/ui", StaticFiles(directory=WEB_DIR), name="ui"),
    ]
