"""All service settings: one pydantic-settings class, env prefix ``LEUK_``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every field can be set by the environment variable ``LEUK_<FIELD_NAME>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="LEUK_", extra="ignore", frozen=True)

    # --- model store -------------------------------------------------------------------------
    model_store: Path = Field(
        default=Path("model_store"),
        description="Folder holding <model>/<version>/ SavedModels with model_card.json.",
    )
    default_model: str | None = Field(
        default=None,
        description="Model served by /v1/classify. Unset: the name in <model_store>/DEFAULT, "
        "or the only model in the store.",
    )
    model_version: int | None = Field(
        default=None,
        ge=1,
        description="Pin the default model to this version. Unset: the newest version that "
        "loads and verifies (a broken newer version is reported and skipped).",
    )
    store_poll_seconds: float = Field(
        default=10.0,
        ge=0,
        description="Check the store this often for a newer version of the default model "
        "(served once verified and warm) or, while not ready, retry the startup load. 0: off.",
    )
    warmup_batch_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [1, 2],
        description="Batch sizes run once at 450x450 before reporting ready (comma separated).",
    )

    # --- batching ----------------------------------------------------------------------------
    max_batch_size: int = Field(default=16, ge=1, le=256, description="Largest inference batch.")
    max_batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="When requests are already queued behind a busy model, wait at most this "
        "long for more to fill a batch. A lone request never waits.",
    )
    exact_batching: bool = Field(
        default=False,
        description="True: every image runs alone (batch size 1), so a result is "
        "bit-identical to a single-image call whatever it arrives with, on every CPU, at "
        "lower throughput under load. False: images that queue together are stacked into "
        "one call; a result then stays within app.batching.BATCH_TOLERANCE (1e-5) of the "
        "single-image result (CPU kernels may round differently per batch size).",
    )
    inference_workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Threads making TensorFlow calls (each takes one batch at a time). More "
        "than one lets single-image calls of non-stackable models use all cores.",
    )
    decode_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Images decoded at the same time (thread pool); bounded so that decoding "
        "does not starve the inference workers of CPU under load.",
    )
    max_queue: int = Field(
        default=128,
        ge=1,
        description="Images waiting for inference; a request whose images do not all fit gets "
        "503 `overloaded` and none of them runs. Sized by time: the committed model clears "
        "~30-170 images/s on 2 shared cores, so 128 images are ~1-4 s of backlog. At least "
        "max_files, so that one full request fits in an empty queue.",
    )

    # --- input limits ------------------------------------------------------------------------
    max_files: int = Field(default=64, ge=1, description="Most images in one multipart request.")
    max_upload_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes; larger bodies get 413 without being read.",
    )
    max_image_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="Largest image (width x height) decoded; guards against decompression bombs.",
    )
    max_request_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Most pixels (sum of width x height declared by the headers) in one "
        "request; more gets 413 request_too_large_decoded before any pixel is decoded.",
    )
    max_decode_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="Service-wide budget of decoded-image memory in flight (estimated from "
        "the headers: decode buffers while decoding, kept RGB pixels until the response). A "
        "request that does not fit beside the others gets 503 decode_memory_busy at once; one "
        "that could not fit even alone gets 413 request_too_large_decoded.",
    )

    # --- HTTP edge (python -m app) ------------------------------------------------------------
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="Largest request line + headers (h11's incomplete-event limit); an "
        "unterminated or larger header gets 400 `bad_http_request` and the connection closes.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A connection that has not sent a complete request head this long after "
        "connecting (or after its previous response) is closed (slow-header clients).",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait for the next chunk of a request body; a stalled upload gets "
        "408 `body_timeout`.",
    )
    keep_alive_seconds: int = Field(
        default=5, ge=1, description="Idle keep-alive connections are closed after this long."
    )
    max_concurrency: int = Field(
        default=128,
        ge=2,
        description="Open connections (or requests in progress) at which a new request gets "
        "503 `too_many_connections` instead of running (uvicorn's limit_concurrency check). "
        "Must exceed the number of client connections expected in normal use.",
    )

    # --- security ----------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys (comma separated), each `name:role:key` (role: classify, "
        "read or admin) or a bare key (a classify key named key-N). Empty with no "
        "api_keys_file: no auth.",
        repr=False,
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File with one API key entry per line, same forms as api_keys (blank lines "
        "and # comments ignored).",
    )

    # --- audit trail (app/audit) -------------------------------------------------------------
    audit_enabled: bool = Field(
        default=True,
        description="Record every classify request and image in the audit trail.",
    )
    data_dir: Path = Field(
        default=Path("data"),
        description="Folder for the service's own data: the embedded SQLite audit database "
        "(audit.sqlite3) is created here on first start.",
    )
    audit_database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the audit database, e.g. "
        "postgresql+psycopg://user:password@host/db (several replicas share one). "
        "Unset: SQLite in data_dir.",
        repr=False,
    )
    audit_failure_policy: Literal["fail_closed", "serve_and_count"] = Field(
        default="fail_closed",
        description="fail_closed: a request whose audit record cannot be written gets 503 "
        "audit_unavailable and no result. serve_and_count (research use only): the result is "
        "returned and leuk_audit_records_lost_total counts the missing record.",
    )
    audit_queue_size: int = Field(
        default=4096,
        ge=1,
        description="Requests waiting for the audit writer; past this they count as failed writes.",
    )
    audit_retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Default age (days) for `python -m app.audit purge`; records are only ever "
        "purged by that command. Unset: the command needs --older-than-days.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed CORS origins (comma separated). Empty: off."
    )

    # --- runtime -----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of the JSON logs on stderr."
    )
    tf_intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="TensorFlow intra-op threads (0: TensorFlow's default, all cores).",
    )
    tf_inter_op_threads: int = Field(
        default=0, ge=0, description="TensorFlow inter-op threads (0: TensorFlow's default)."
    )
    tune_malloc: bool = Field(
        default=True,
        description="Raise glibc's mmap/trim thresholds at startup so image buffers are reused "
        "(cuts a 450x450 BMP decode from ~4 ms to ~1 ms).",
    )
    host: str = Field(default="127.0.0.1", description="Bind address for `python -m app`.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port for `python -m app`.")
    shutdown_grace_seconds: int = Field(
        default=25,
        gt=0,
        le=600,
        description="On SIGTERM, `python -m app` stops accepting and lets in-flight requests "
        "finish for at most this long (keep it below the orchestrator's stop timeout; "
        "docker-compose.yml gives 30 s).",
    )

    # --- explanations --------------------------------------------------------------------
    explain_concurrency: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Explanation requests running at once, in their own threads (never in "
        "the classification batcher). A request beyond this gets 503 explain_busy.",
    )

    @model_validator(mode="after")
    def _queue_holds_a_full_request(self) -> Settings:
        if self.max_queue < self.max_files:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be >= max_files ({self.max_files}): "
                "a request's images are admitted together"
            )
        return self

    @field_validator("api_keys", "cors_origins", "warmup_batch_sizes", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    def audit_url(self) -> str:
        """The audit database URL: the configured one, else SQLite under ``data_dir``."""
        if self.audit_database_url:
            return self.audit_database_url
        return f"sqlite:///{(self.data_dir / 'audit.sqlite3').resolve()}"

    def load_api_keys(self) -> list[str]:
        """Keys from ``api_keys`` plus ``api_keys_file`` (read once, at app creation)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys
