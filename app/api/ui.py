"""The review page: static files from the package (app/ui/), no CDN, no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

ui = APIRouter(include_in_schema=False)


@ui.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@ui.get("/ui")
async def ui_no_slash() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@ui.get("/ui/")
async def page() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def mount_ui(app: FastAPI) -> None:
    app.include_router(ui)
    app.mount("/ui/static", StaticFiles(directory=str(UI_DIR)), name="ui-static")
