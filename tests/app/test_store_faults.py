"""Store faults against the running service: /health must tell the truth at every step.

Each test serves the real app over a writable tiny store with the store poller on
(``store_poll_seconds=0.2``), damages or fills the store the way an operator or a
non-atomic copy would, and waits (up to ``DEADLINE`` seconds, polling) until /health
reports it, then checks /health/ready, /model-info and classify agree. Nothing here
asserts on timing: a slow machine only makes the waits longer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from app.settings import Settings
from tests.app.conftest import CNMC_PNGS, serve

PNG = CNMC_PNGS[0].read_bytes()
POLL_SECONDS = 0.2
DEADLINE = 20.0
DATA_FILE = "variables/variables.data-00000-of-00001"

pytestmark = pytest.mark.anyio


# --- store manipulation ------------------------------------------------------------------
def cp_r_order(src: Path, base: Path | None = None) -> Iterator[Path]:
    """Files under ``src`` in the order ``cp -r`` copies them: directory-listing order,
    depth first, one file after another."""
    base = base or src
    for entry in os.scandir(src):
        path = Path(entry.path)
        if entry.is_dir():
            yield from cp_r_order(path, base)
        else:
            yield path.relative_to(base)


def copy_file(src: Path, dst: Path, rel: Path, upto: int | None = None) -> None:
    """Copy one file's bytes (``upto``: only the first bytes, a copy still in progress).
    No metadata is kept, as with plain ``cp``."""
    target = dst / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    written = target.stat().st_size if target.exists() else 0  # carries on where it stopped
    with target.open("ab") as out:
        out.write((src / rel).read_bytes()[written:upto])


def version_source(store: Path, tmp_path: Path, version: int) -> Path:
    """Version 2 of 'tiny' prepared aside as ``version`` (card edited, SavedModel as is)."""
    aside = tmp_path / f"aside-{version}"
    shutil.copytree(store / "tiny" / "2", aside)
    edit_card(aside, version=version)
    return aside


def publish(source: Path, target: Path) -> None:
    """The recommended way: written under a temporary name, renamed into place."""
    tmp = target.parent / f".tmp-{target.name}"
    shutil.copytree(source, tmp)
    tmp.rename(target)


def edit_card(version_dir: Path, **changes: object) -> None:
    card_path = version_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


# --- observing the service ---------------------------------------------------------------
async def health_when(
    client: httpx.AsyncClient, holds: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The first /health body for which ``holds`` is true (fails after DEADLINE seconds)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        body: dict[str, Any] = (await client.get("/health")).json()
        if holds(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/health never showed {what}; last: {body}")
        await anyio.sleep(0.05)


async def classify(client: httpx.AsyncClient, path: str = "/v1/classify") -> httpx.Response:
    return await client.post(path, content=PNG, headers={"content-type": "image/png"})


def version_state(health: dict[str, Any], model: str, version: int) -> dict[str, Any]:
    state: dict[str, Any] = health["models"].get(model, {}).get("versions", {}).get(str(version))
    return state or {}


def report(step: str, health: dict[str, Any], classified: httpx.Response) -> None:
    """One row of the fault table (visible with ``pytest -s``)."""
    status = classified.status_code
    print(f"| {step} | ready={health['ready']} reason={health['reason']!r} | {status} |")


async def assert_serves(client: httpx.AsyncClient, model: str, version: int) -> httpx.Response:
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {
        "status": "ready",
        "model": model,
        "version": version,
    }
    response = await classify(client)
    assert response.status_code == 200, response.text
    assert (response.json()["model"], response.json()["version"]) == (model, version)
    info = await client.get("/model-info")
    assert info.status_code == 200, info.text
    assert info.json()["name"] == model and info.json()["served_version"] == version
    return response


@pytest.fixture
def polling(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return make_settings(store_poll_seconds=POLL_SECONDS, **overrides)

    return build


# --- faults ------------------------------------------------------------------------------
async def test_corrupt_newer_version_is_reported_then_served_once_repaired(
    tiny_store: Path, tmp_path: Path, polling: Callable[..., Settings]
) -> None:
    source = version_source(tiny_store, tmp_path, 3)
    async with serve(polling()) as client:
        await assert_serves(client, "tiny", 2)
        corrupt = tmp_path / "corrupt"
        shutil.copytree(source, corrupt)
        flip_last_byte(corrupt / DATA_FILE)  # before publishing: the poller never sees it intact
        publish(corrupt, tiny_store / "tiny" / "3")
        health = await health_when(
            client, lambda h: version_state(h, "tiny", 3).get("state") == "failed", "v3 failed"
        )
        assert health["ready"] is True
        assert health["reason"] == (
            f"serving last good version; skipped version 3: sha256 mismatch for {DATA_FILE}"
        )
        report("corrupt v3 (bit flip)", health, await assert_serves(client, "tiny", 2))

        shutil.copyfile(source / DATA_FILE, tiny_store / "tiny" / "3" / DATA_FILE)
        health = await health_when(client, lambda h: h["default_version"] == 3, "v3 served")
        assert health["reason"] is None
        assert version_state(health, "tiny", 3)["state"] == "ready"
        assert version_state(health, "tiny", 3)["reason"] is None
        report("corrupt v3 repaired", health, await assert_serves(client, "tiny", 3))


async def test_invalid_card_is_reported_then_served_once_fixed(
    tiny_store: Path, tmp_path: Path, polling: Callable[..., Settings]
) -> None:
    source = version_source(tiny_store, tmp_path, 3)
    async with serve(polling()) as client:
        broken = tmp_path / "broken"
        shutil.copytree(source, broken)
        edit_card(broken, threshold=7)
        publish(broken, tiny_store / "tiny" / "3")
        health = await health_when(
            client, lambda h: version_state(h, "tiny", 3).get("state") == "failed", "v3 failed"
        )
        assert health["ready"] is True
        assert health["reason"].startswith(
            "serving last good version; skipped version 3: model_card.json is invalid: "
        )
        report("invalid card v3", health, await assert_serves(client, "tiny", 2))

        edit_card(tiny_store / "tiny" / "3", threshold=0.5)
        health = await health_when(client, lambda h: h["default_version"] == 3, "v3 served")
        assert health["reason"] is None
        report("card fixed", health, await assert_serves(client, "tiny", 3))


async def test_half_copied_version_is_verified_again_as_the_copy_goes_on(
    tiny_store: Path, tmp_path: Path, polling: Callable[..., Settings]
) -> None:
    source = version_source(tiny_store, tmp_path, 3)
    target = tiny_store / "tiny" / "3"
    files = list(cp_r_order(source))
    assert len(files) >= 4  # card, saved_model.pb, fingerprint.pb, variables/*
    async with serve(polling()) as client:
        await assert_serves(client, "tiny", 2)
        target.mkdir()
        copy_file(source, target, files[0])
        first = await health_when(
            client, lambda h: version_state(h, "tiny", 3).get("state") == "failed", "v3 failed"
        )
        assert first["ready"] is True and first["default_version"] == 2
        assert first["reason"].startswith("serving last good version; skipped version 3: ")
        report(f"half-copied v3 (only {files[0]})", first, await assert_serves(client, "tiny", 2))

        # Every file but the last, and the last one half written: failed for another reason.
        for rel in files[1:-1]:
            copy_file(source, target, rel)
        last = files[-1]
        copy_file(source, target, last, upto=(source / last).stat().st_size // 2)
        before = version_state(first, "tiny", 3)["reason"]
        health = await health_when(
            client,
            lambda h: version_state(h, "tiny", 3).get("reason") not in (None, before),
            "v3 verified again",
        )
        assert version_state(health, "tiny", 3)["state"] == "failed"
        report(f"all but half of {last}", health, await assert_serves(client, "tiny", 2))

        copy_file(source, target, last)
        health = await health_when(client, lambda h: h["default_version"] == 3, "v3 served")
        assert health["reason"] is None
        report("copy complete", health, await assert_serves(client, "tiny", 3))


async def test_empty_store_becomes_ready_when_a_model_is_copied_in_file_by_file(
    tiny_store_template: Path, tmp_path: Path, polling: Callable[..., Settings]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    source = tiny_store_template / "other"
    files = list(cp_r_order(source))
    async with serve(polling(model_store=store)) as client:
        health = (await client.get("/health")).json()
        assert health["ready"] is False and "store has 0 models" in health["reason"]
        response = await classify(client)
        assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
        info = await client.get("/model-info")
        assert info.status_code == 503 and info.json()["error"]["code"] == "not_ready"
        report("empty store", health, response)

        copy_file(source, store / "other", files[0])
        first = await health_when(
            client, lambda h: "No loadable version of 'other'" in (h["reason"] or ""), "v1 seen"
        )
        assert first["ready"] is False
        assert version_state(first, "other", 1)["state"] == "failed"
        assert (await client.get("/health/ready")).json()["error"]["detail"] == first["reason"]
        response = await classify(client)
        assert response.status_code == 503
        report(f"other/{files[0]} copied", first, response)

        for rel in files[1:-1]:
            copy_file(source, store / "other", rel)
        last = files[-1]
        copy_file(source, store / "other", last, upto=(source / last).stat().st_size // 2)
        health = await health_when(
            client,
            lambda h: h["reason"] != first["reason"] and "other" in (h["reason"] or ""),
            "a new reason",
        )
        assert health["ready"] is False
        report(f"all but half of {last}", health, await classify(client))

        copy_file(source, store / "other", last)
        health = await health_when(client, lambda h: h["ready"], "ready")
        assert health["reason"] is None and health["default_model"] == "other"
        report("copy complete", health, await assert_serves(client, "other", 1))


async def test_served_files_deleted_keeps_serving_from_memory_and_says_so(
    tiny_store: Path, polling: Callable[..., Settings]
) -> None:
    async with serve(polling()) as client:
        dataplane = client.app.state.dataplane  # type: ignore[attr-defined]
        await assert_serves(client, "tiny", 2)

        (tiny_store / "tiny" / "2" / DATA_FILE).unlink()
        await anyio.to_thread.run_sync(dataplane.lifecycle.refresh)  # at least one poll saw it
        health = (await client.get("/health")).json()
        assert health["ready"] is True and health["default_version"] == 2
        assert health["reason"] == (
            f"serving version 2 from memory; files missing on disk: {DATA_FILE}"
        )
        assert version_state(health, "tiny", 2)["state"] == "ready"
        assert version_state(health, "tiny", 2)["reason"] == f"files missing on disk: {DATA_FILE}"
        report("served v2 data file deleted", health, await assert_serves(client, "tiny", 2))

        shutil.rmtree(tiny_store / "tiny" / "2")
        await anyio.to_thread.run_sync(dataplane.lifecycle.refresh)
        health = (await client.get("/health")).json()
        assert health["reason"] == "serving version 2 from memory; files missing on disk: " + (
            "version folder"
        )
        assert version_state(health, "tiny", 2)["reason"] == "files missing on disk: version folder"
        assert version_state(health, "tiny", 1)["state"] == "available"
        for path in ("/v1/models/tiny", "/v1/models/tiny/versions/2"):
            info = await client.get(path)
            assert info.status_code == 200, info.text
            assert info.json()["served_version"] == 2 and info.json()["state"] == "ready"
        report("served v2 folder deleted", health, await assert_serves(client, "tiny", 2))

        shutil.rmtree(tiny_store / "tiny")
        await anyio.to_thread.run_sync(dataplane.lifecycle.refresh)
        health = (await client.get("/health")).json()
        assert health["ready"] is True
        assert list(health["models"]["tiny"]["versions"]) == ["2"]
        info = await client.get("/v1/models/tiny")
        assert info.status_code == 200 and info.json()["versions"].keys() == {"2"}
        assert (await client.get("/v1/models/tiny/versions/1")).status_code == 404
        assert (await classify(client, "/v1/models/tiny/classify")).status_code == 200
        assert (await client.get("/v1/models/tiny/ready")).status_code == 200
        report("model folder deleted", health, await assert_serves(client, "tiny", 2))
