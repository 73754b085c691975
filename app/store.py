"""The model store on disk: the one module that knows its layout.

    <root>/DEFAULT                         the default model's name (optional)
    <root>/<model>/<version>/              integer versions, ASCII digits, no leading zero
    <root>/<model>/<version>/model_card.json   contract.card.ModelCard
    <root>/<model>/<version>/saved_model.pb, variables/...   every file hashed in the card

Anything else (dot folders, ``.tmp-*`` folders of a writer, non-integer names) is ignored.
Rules and publishing (write under a temporary name, then rename into place) are in
model_store/README.md. Which version is *served* is not decided here but in
``app.registry.ModelRegistry.resolve``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from app.errors import ModelNotFound
from contract.card import CARD_FILE, ModelCard

DEFAULT_FILE = "DEFAULT"
_VERSION_NAME = re.compile(r"[1-9][0-9]{0,8}")

Fingerprint = tuple[tuple[str, int, int], ...]
"""(relative path, size, mtime_ns) of every file of a version folder, card included."""


class VersionFailed(Exception):
    """A version cannot be served; ``str(self)`` says why."""


def parse_version(text: str) -> int | None:
    """The version a folder or URL segment names: ASCII digits without a leading zero only
    (``str.isdigit`` would take superscripts and other scripts' digits); else None."""
    return int(text) if _VERSION_NAME.fullmatch(text) else None


@dataclass(frozen=True)
class ModelStore:
    root: Path

    def models(self) -> dict[str, list[int]]:
        """Model name -> its integer versions, ascending. Other folders are ignored."""
        found: dict[str, list[int]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            try:
                versions = sorted(
                    version
                    for child in model_dir.iterdir()
                    if child.is_dir() and (version := parse_version(child.name)) is not None
                )
            except OSError:  # removed while listing
                continue
            if versions:
                found[model_dir.name] = versions
        return found

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def default_model(self, configured: str | None) -> str:
        """The configured name, else the DEFAULT file's, else the only model in the store."""
        if configured:
            return configured
        default_file = self.root / DEFAULT_FILE
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

    def read_card(self, name: str, version: int) -> ModelCard:
        """The version's card, checked against its folder; raises VersionFailed."""
        path = self.version_dir(name, version) / CARD_FILE
        try:
            card = ModelCard.model_validate_json(path.read_bytes())
        except FileNotFoundError as exc:
            raise VersionFailed(f"{CARD_FILE} is missing") from exc
        except OSError as exc:
            raise VersionFailed(f"{CARD_FILE} cannot be read: {exc.strerror}") from exc
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise VersionFailed(
                f"{CARD_FILE} is invalid: {error['msg']}" + (f" ({where})" if where else "")
            ) from exc
        if card.name != name or card.version != version:
            raise VersionFailed(f"card says {card.name}/{card.version}, folder is {name}/{version}")
        return card

    def verify(self, name: str, version: int, card: ModelCard) -> None:
        """Every SavedModel file must be listed in the card and match its sha256."""
        version_dir = self.version_dir(name, version)
        root = version_dir.resolve()
        for rel in card.files:
            path = (version_dir / rel).resolve()
            if not path.is_relative_to(root):
                raise VersionFailed(f"card lists a file outside the version folder: {rel}")
            if not path.is_file():
                raise VersionFailed(f"file listed in the card is missing: {rel}")
        # Every file is present before any is hashed: a half-copied version fails at once.
        for rel, expected in card.files.items():
            digest = hashlib.sha256()
            with (version_dir / rel).open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != expected.lower():
                raise VersionFailed(f"sha256 mismatch for {rel}")
        required = [version_dir / "saved_model.pb", *(version_dir / "variables").glob("**/*")]
        for path in required:
            rel = path.relative_to(version_dir).as_posix()
            if path.is_file() and rel not in card.files:
                raise VersionFailed(f"SavedModel file not listed in the card: {rel}")

    def fingerprint(self, name: str, version: int) -> Fingerprint:
        """Names, sizes and mtimes of the version's files (empty when the folder is gone)."""
        version_dir = self.version_dir(name, version)
        found = []
        try:
            for path in version_dir.rglob("*"):
                if path.is_file():
                    stat = path.stat()
                    rel = path.relative_to(version_dir).as_posix()
                    found.append((rel, stat.st_size, stat.st_mtime_ns))
        except OSError:  # a file vanished while listing: a changed folder, fingerprint later
            return ()
        return tuple(sorted(found))

    def missing_files(self, name: str, version: int, card: ModelCard) -> list[str]:
        """Files of a version that are not on disk (["version folder"] if it is gone)."""
        version_dir = self.version_dir(name, version)
        if not version_dir.is_dir():
            return ["version folder"]
        return [rel for rel in [CARD_FILE, *card.files] if not (version_dir / rel).is_file()]
