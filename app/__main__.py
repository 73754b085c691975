"""``python -m app``: serve with uvicorn using the LEUK_* settings."""

from __future__ import annotations

import uvicorn

from app.settings import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        access_log=False,  # RequestContextMiddleware writes one JSON line per request
        log_level=settings.log_level.lower(),
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
