"""``python -m app``: the one way to serve: uvicorn with the LEUK_* settings, HTTP limits and
graceful-shutdown bound of app/server.py, logging JSON only."""

from __future__ import annotations

import os
from typing import Any

import uvicorn

from app.server import uvicorn_options
from app.settings import Settings


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's own messages (startup, errors) in the same JSON format as the service's."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.log.JsonFormatter"}},
        "handlers": {"json": handler},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["json"], "level": level, "propagate": False},
        },
    }


def main() -> None:
    # TensorFlow's C++ start-up banners are not JSON; keep warnings and errors only.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = Settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        access_log=False,  # RequestContextMiddleware writes one JSON line per request
        log_config=uvicorn_log_config(settings.log_level),
        log_level=settings.log_level.lower(),
        loop="uvloop",
        **uvicorn_options(settings),  # h11 and every HTTP limit: app/server.py
    )


if __name__ == "__main__":
    main()
