"""The model store: discovery, model cards, sha256 verification, loaded versions by name.

Layout and rules are in model_store/README.md (as TensorFlow Serving: integer version
folders, the highest served unless pinned, anything else ignored). A version that fails to
load (missing card, hash mismatch, unreadable SavedModel) is recorded with its reason and
never crashes the process, and is verified again once its files change (a copy completed,
a file replaced); without a pin, the newest version that loads is served. A loaded version
keeps serving from memory if its files later vanish from disk, and says so in ``describe``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import ModelNotFound, ModelUnavailable, VersionNotFound
from app.logging import get_logger
from app.runtime import ModelRuntime, SavedModelRuntime

_log = get_logger("store")
CARD_FILE = "model_card.json"
_TF_FUNCTION_PREFIX = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


class CardInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    signature: str = "serving_default"
    input_name: str = "images"
    dtype: Literal["uint8"] = "uint8"


class CardOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    output_name: str = "probabilities"


class ModelCard(BaseModel):
    """The keys of model_card.json the service relies on; the rest is kept as-is."""

    model_config = ConfigDict(extra="allow")
    name: str
    version: int
    labels: list[str] = Field(min_length=2)
    positive_label: str
    threshold: float = Field(ge=0.0, le=1.0)
    input: CardInput
    output: CardOutput
    files: dict[str, str] = Field(min_length=1)
    intended_use: str = ""


@dataclass
class LoadedVersion:
    """One verified, loaded and warmed-up model version."""

    name: str
    version: int
    path: Path
    card: ModelCard
    runtime: ModelRuntime
    load_seconds: float
    loaded_at: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    @property
    def positive_index(self) -> int:
        return self.card.labels.index(self.card.positive_label)


Fingerprint = tuple[tuple[str, int, int], ...]
"""(relative path, size, mtime_ns) of every file of a version folder, card included."""


@dataclass
class VersionStatus:
    state: Literal["available", "loading", "ready", "failed"] = "available"
    reason: str | None = None
    # What the folder held when it failed: the version is verified again once this changes
    # (a version seen half-copied must not stay failed once the copy completes).
    fingerprint: Fingerprint | None = None


class VersionFailed(Exception):
    """A version cannot be served; ``str(self)`` says why."""


Loader = Callable[[Path, ModelCard], ModelRuntime]
Warmup = Callable[[ModelRuntime], None]
"""Runs the first calls of a fresh runtime, before it is reported ready."""


def load_saved_model(path: Path, card: ModelCard) -> ModelRuntime:
    return SavedModelRuntime.load(
        path,
        signature=card.input.signature,
        input_name=card.input.input_name,
        output_name=card.output.output_name,
        n_labels=len(card.labels),
    )


def probe_images(count: int, seed: int = 0) -> NDArray[np.uint8]:
    """Synthetic 450x450 'cells' (textured discs on black) for warm-up and the batching probe."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:450, :450]
    images = np.zeros((count, 450, 450, 3), dtype=np.uint8)
    for image in images:
        cy, cx, radius = rng.uniform(170, 280), rng.uniform(170, 280), rng.uniform(60, 110)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[disc] = rng.integers(40, 240, size=(int(disc.sum()), 3), dtype=np.uint8)
    return images


def warmup_runtime(batch_sizes: Sequence[int]) -> Warmup:
    """Run each batch size once at 450x450: first calls allocate kernels and buffers."""

    def warm(runtime: ModelRuntime) -> None:
        for size in batch_sizes:
            runtime.predict(probe_images(size))

    return warm


def read_card(version_dir: Path) -> ModelCard:
    try:
        return ModelCard.model_validate_json((version_dir / CARD_FILE).read_bytes())
    except FileNotFoundError as exc:
        raise VersionFailed(f"{CARD_FILE} is missing") from exc
    except OSError as exc:
        raise VersionFailed(f"{CARD_FILE} cannot be read: {exc.strerror}") from exc
    except ValidationError as exc:
        raise VersionFailed(f"{CARD_FILE} is invalid: {exc.errors()[0]['msg']}") from exc


def verify_files(version_dir: Path, card: ModelCard) -> None:
    """Every SavedModel file must be listed in the card and match its sha256."""
    root = version_dir.resolve()
    for rel in card.files:
        path = (version_dir / rel).resolve()
        if not path.is_relative_to(root):
            raise VersionFailed(f"card lists a file outside the version folder: {rel}")
        if not path.is_file():
            raise VersionFailed(f"file listed in the card is missing: {rel}")
    # Every file is present before any is hashed: a half-copied version fails at once.
    for rel, expected in card.files.items():
        path = version_dir / rel
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected.lower():
            raise VersionFailed(f"sha256 mismatch for {rel}")
    required = [version_dir / "saved_model.pb", *(version_dir / "variables").glob("**/*")]
    for path in required:
        rel = path.relative_to(version_dir).as_posix()
        if path.is_file() and rel not in card.files:
            raise VersionFailed(f"SavedModel file not listed in the card: {rel}")


def fingerprint(version_dir: Path) -> Fingerprint:
    """Names, sizes and mtimes of the files under ``version_dir`` (empty when it is gone)."""
    found = []
    try:
        for path in version_dir.rglob("*"):
            if path.is_file():
                stat = path.stat()
                rel = path.relative_to(version_dir).as_posix()
                found.append((rel, stat.st_size, stat.st_mtime_ns))
    except OSError:  # a file vanished while listing: a changed folder, fingerprint again later
        return ()
    return tuple(sorted(found))


def missing_files(version_dir: Path, card: ModelCard) -> list[str]:
    """Files of a loaded version that are no longer on disk (["version folder"] if all are)."""
    if not version_dir.is_dir():
        return ["version folder"]
    return [rel for rel in [CARD_FILE, *card.files] if not (version_dir / rel).is_file()]


def load_error_reason(exc: BaseException) -> str:
    """A readable, bounded reason: the exception type and the first line of its message.

    TensorFlow's errors keep their text in ``.message`` and repr as e.g. ``DataLossError()``.
    """
    if isinstance(exc, VersionFailed):
        return str(exc)[:500]
    message = str(getattr(exc, "message", "") or exc)
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    first_line = _TF_FUNCTION_PREFIX.sub("", first_line)  # names TF's graph node, not the file
    reason = f"load failed: {type(exc).__name__}" + (f": {first_line}" if first_line else "")
    return reason if len(reason) <= 300 else reason[:299] + "…"


def _check_card(card: ModelCard, name: str, version: int) -> None:
    if card.name != name or card.version != version:
        raise VersionFailed(f"card says {card.name}/{card.version}, folder is {name}/{version}")
    if card.positive_label not in card.labels:
        raise VersionFailed("positive_label is not one of the labels")


@dataclass
class ModelRegistry:
    """Versions on disk, their state, and the loaded ones. Thread-safe; loading blocks."""

    store: Path
    loader: Loader = load_saved_model
    warmup: Warmup = field(default_factory=lambda: warmup_runtime([1]))
    # How loaded versions are batched (app/batching.py): "stacked", or "per_image" when
    # LEUK_EXACT_BATCHING runs every image alone. Reported per loaded version.
    batching: Literal["stacked", "per_image"] = "stacked"
    _loaded: dict[tuple[str, int], LoadedVersion] = field(default_factory=dict)
    _status: dict[tuple[str, int], VersionStatus] = field(default_factory=dict)
    _chosen: dict[str, int] = field(default_factory=dict)  # model -> version served by default
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _load_locks: dict[tuple[str, int], threading.Lock] = field(default_factory=dict)

    # --- discovery ---------------------------------------------------------------------
    def models(self) -> dict[str, list[int]]:
        """Model name -> its integer versions, ascending. Other folders are ignored."""
        found: dict[str, list[int]] = {}
        if not self.store.is_dir():
            return found
        for model_dir in sorted(self.store.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            try:
                versions = sorted(
                    int(child.name)
                    for child in model_dir.iterdir()
                    if child.is_dir() and child.name.isdigit() and int(child.name) >= 1
                )
            except OSError:  # removed while listing
                continue
            if versions:
                found[model_dir.name] = versions
        return found

    def default_model_name(self, configured: str | None) -> str:
        if configured:
            return configured
        default_file = self.store / "DEFAULT"
        if default_file.is_file():
            name = default_file.read_text(encoding="utf-8").strip()
            if name:
                return name
        models = self.models()
        if len(models) == 1:
            return next(iter(models))
        raise ModelNotFound(
            f"No default model: set LEUK_DEFAULT_MODEL or write {default_file} "
            f"(store has {len(models)} models)."
        )

    # --- loading -----------------------------------------------------------------------
    def load(self, name: str, version: int) -> LoadedVersion:
        """Verify, load and warm up one version (once); raises VersionFailed with the reason."""
        key = (name, version)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
                status = self._status.get(key)
            # Taken before verifying: files that change during the load are verified again.
            seen = fingerprint(self.store / name / str(version))
            if status is not None and status.state == "failed" and status.fingerprint == seen:
                raise VersionFailed(status.reason or "failed")
            with self._lock:
                self._status[key] = VersionStatus("loading")
            try:
                loaded = self._load_uncached(name, version)
            except Exception as exc:
                reason = load_error_reason(exc)
                with self._lock:
                    self._status[key] = VersionStatus("failed", reason, seen)
                # Once per distinct set of files: a poller retrying unchanged files is silent.
                _log.warning(
                    "version failed", extra={"model": name, "version": version, "reason": reason}
                )
                raise VersionFailed(reason) from exc
            with self._lock:
                self._loaded[key] = loaded
                self._status[key] = VersionStatus("ready")
            return loaded

    def _load_uncached(self, name: str, version: int) -> LoadedVersion:
        path = self.store / name / str(version)
        start = time.perf_counter()
        card = read_card(path)
        _check_card(card, name, version)
        verify_files(path, card)
        runtime = self.loader(path, card)
        self.warmup(runtime)
        return LoadedVersion(
            name=name,
            version=version,
            path=path,
            card=card,
            runtime=runtime,
            load_seconds=time.perf_counter() - start,
            loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def select(self, name: str, pinned: int | None = None) -> LoadedVersion:
        """The version of ``name`` to serve by default: the pin, or the newest that loads."""
        with self._lock:
            chosen = self._chosen.get(name)
            if chosen is not None and (name, chosen) in self._loaded:
                return self._loaded[(name, chosen)]
        versions = self.models().get(name)
        if not versions:
            raise ModelNotFound(f"Model {name!r} is not in the store.")
        if pinned is not None:
            if pinned not in versions:
                raise VersionNotFound(f"Pinned version {pinned} of {name!r} is not in the store.")
            candidates = [pinned]
        else:
            candidates = sorted(versions, reverse=True)
        reasons = []
        for version in candidates:
            try:
                loaded = self.load(name, version)
            except VersionFailed as exc:
                reasons.append(f"version {version}: {exc}")
                continue
            with self._lock:
                self._chosen[name] = version
            return loaded
        raise ModelUnavailable(f"No loadable version of {name!r}: " + "; ".join(reasons))

    def refresh(self, name: str) -> LoadedVersion | None:
        """Serve a newer version of ``name`` if one appeared and loads; else None.

        A version that failed is verified again only once its files changed (see ``load``);
        the current one is kept meanwhile.
        """
        with self._lock:
            current = self._chosen.get(name)
        if current is None:
            return None
        newer = [v for v in self.models().get(name, []) if v > current]
        for version in sorted(newer, reverse=True):
            try:
                loaded = self.load(name, version)
            except VersionFailed:
                continue
            with self._lock:
                self._chosen[name] = version
            return loaded
        return None

    def get(self, name: str, version: int | None) -> LoadedVersion:
        """What a request for ``name`` (and optionally ``version``) is served by."""
        if version is None:
            return self.select(name)
        with self._lock:
            loaded = self._loaded.get((name, version))
        if loaded is not None:
            return loaded
        versions = self.models().get(name)
        if not versions:
            raise ModelNotFound(f"Model {name!r} is not in the store.")
        if version not in versions:
            raise VersionNotFound(f"Model {name!r} has no version {version}.")
        try:
            return self.load(name, version)
        except VersionFailed as exc:
            raise ModelUnavailable(f"{name} version {version} cannot be served: {exc}") from exc

    def get_loaded(self, name: str, version: int | None) -> LoadedVersion | None:
        """Non-blocking lookup of an already loaded version (the request fast path)."""
        with self._lock:
            if version is None:
                version = self._chosen.get(name)
                if version is None:
                    return None
            return self._loaded.get((name, version))

    # --- reporting ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Every model and version on disk or loaded, with its state (and why, when failed).

        A loaded version stays ``ready`` when its files vanish from disk (it still answers
        from memory); its reason then names the missing files.
        """
        with self._lock:
            status = dict(self._status)
            chosen = dict(self._chosen)
            loaded = dict(self._loaded)
        on_disk = self.models()
        names = sorted({*on_disk, *(name for name, _ in loaded)})
        out: dict[str, Any] = {}
        for name in names:
            versions = sorted({*on_disk.get(name, []), *(v for n, v in loaded if n == name)})
            out[name] = {
                "default_version": chosen.get(name),
                "versions": {
                    str(v): self._describe_version(status.get((name, v)), loaded.get((name, v)))
                    for v in versions
                },
            }
        return out

    def _describe_version(
        self, status: VersionStatus | None, loaded: LoadedVersion | None
    ) -> dict[str, Any]:
        status = status or VersionStatus()
        reason = status.reason
        if loaded is not None and (missing := missing_files(loaded.path, loaded.card)):
            reason = "files missing on disk: " + ", ".join(missing)
        batching = self.batching if loaded is not None else None
        return {"state": status.state, "reason": reason, "batching": batching}

    def loaded_versions(self) -> list[LoadedVersion]:
        with self._lock:
            return list(self._loaded.values())
