"""HTTP floor (benchmark only): reads the upload and answers, with no decode and no model.

Its throughput is what uvicorn + FastAPI alone cost for a 600 kB upload on this machine, the
part of every request the model never sees. Same two body shapes as the service: a raw
``image/*`` body or a multipart form with a ``files`` field.

Run: ``uvicorn --factory bench.http_floor_app:create_app``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request


def create_app() -> FastAPI:
    app = FastAPI(title="HTTP floor (benchmark only)")

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict[str, int]:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            sizes = [
                len(await part.read())
                for part in form.getlist("files")
                if not isinstance(part, str)
            ]
            return {"bytes": sum(sizes)}
        return {"bytes": len(await request.body())}

    return app
