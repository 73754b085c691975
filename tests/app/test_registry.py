"""The store on disk (app/store.py: discovery, cards, hashes) and the registry of loaded
versions (app/registry.py: which version serves, failures, recovery), over broken stores."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.errors import ModelNotFound, ModelUnavailable, VersionNotFound
from app.registry import ModelRegistry, load_saved_model
from app.runtime import ModelRuntime
from app.settings import Settings
from app.store import ModelStore, VersionFailed
from contract.card import ModelCard
from tests.app.conftest import CNMC_PNGS, serve

PNG = CNMC_PNGS[0].read_bytes()


def corrupt_variables(version_dir: Path) -> None:
    data = next((version_dir / "variables").glob("variables.data-*"))
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))


def edit_card(version_dir: Path, **changes: object) -> None:
    card_path = version_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def registry_of(store: Path) -> ModelRegistry:
    return ModelRegistry(ModelStore(store))


# --- discovery ---------------------------------------------------------------------------
def test_discovery_ignores_temporary_and_non_integer_folders(tiny_store: Path) -> None:
    (tiny_store / "tiny" / ".tmp-3-abc").mkdir()
    (tiny_store / "tiny" / "latest").mkdir()
    (tiny_store / "tiny" / "0").mkdir()
    (tiny_store / ".hidden").mkdir()
    (tiny_store / "empty-model").mkdir()
    (tiny_store / "tiny" / "01").mkdir()  # leading zero: not version 1
    (tiny_store / "tiny" / "\u00b2").mkdir()  # superscript two: not a version
    assert ModelStore(tiny_store).models() == {"other": [1], "tiny": [1, 2]}


def test_default_model_from_setting_file_or_only_model(tiny_store: Path, tmp_path: Path) -> None:
    store = ModelStore(tiny_store)
    assert store.default_model(None) == "tiny"
    assert store.default_model("other") == "other"
    (tiny_store / "DEFAULT").unlink()
    with pytest.raises(ModelNotFound):
        store.default_model(None)  # two models and no DEFAULT: ambiguous
    single = tmp_path / "single"
    shutil.copytree(tiny_store / "other", single / "other")
    assert ModelStore(single).default_model(None) == "other"


def test_newest_version_is_selected(tiny_store: Path) -> None:
    registry = registry_of(tiny_store)
    loaded = registry.resolve("tiny")
    assert (loaded.name, loaded.version) == ("tiny", 2)
    assert loaded.card.files and loaded.load_seconds > 0
    assert registry.resolve("tiny", 1).version == 1  # an explicit version...
    assert registry.resolve("tiny").version == 2  # ...does not change the default
    pinned = registry_of(tiny_store)
    pinned.pin("tiny", 1)
    assert pinned.resolve("tiny").version == 1
    assert pinned.refresh("tiny") is None  # a pinned model never moves


# --- verification ------------------------------------------------------------------------
def test_hash_mismatch_is_refused(tiny_store: Path) -> None:
    corrupt_variables(tiny_store / "tiny" / "2")
    registry = registry_of(tiny_store)
    with pytest.raises(
        VersionFailed, match=re.escape("sha256 mismatch for variables/variables.data")
    ):
        registry.load("tiny", 2)
    state = registry.describe()["tiny"]["versions"]["2"]
    assert state["state"] == "failed" and "sha256 mismatch" in state["reason"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "model_card.json").unlink(), "model_card.json is missing"),
        (lambda d: (d / "model_card.json").write_text("{not json"), "model_card.json is invalid"),
        (lambda d: edit_card(d, files={}), "model_card.json is invalid"),
        (lambda d: edit_card(d, version=5), "card says tiny/5"),
        (lambda d: edit_card(d, positive_label="blast"), "positive_label"),
        (lambda d: (d / "saved_model.pb").unlink(), "missing: saved_model.pb"),
        (lambda d: (d / "variables" / "extra.bin").write_bytes(b"x"), "not listed"),
        (lambda d: edit_card(d, files={"../../x": "0" * 64}), "outside the version folder"),
    ],
)
def test_broken_versions_say_why(
    tiny_store: Path, damage: Callable[[Path], object], reason: str
) -> None:
    damage(tiny_store / "tiny" / "2")
    with pytest.raises(VersionFailed, match=re.escape(reason)):
        registry_of(tiny_store).load("tiny", 2)


def flip_middle_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (
            lambda d: flip_middle_byte(next((d / "variables").glob("variables.data-*"))),
            r"load failed: DataLossError: TensorBundle at .*Checksum does not match",
        ),
        (
            lambda d: (d / "saved_model.pb").write_bytes(b"not a protobuf"),
            r"load failed: OSError: Cannot parse file .*saved_model\.pb",
        ),
        (
            lambda d: (d / "variables" / "variables.index").write_bytes(b"short"),
            r"load failed: \w*Error: .*too short",
        ),
    ],
)
def test_tensorflow_load_errors_say_what_failed(
    tiny_store: Path, damage: Callable[[Path], object], reason: str
) -> None:
    """Damage the card's hashes cannot see (re-hashed): TensorFlow's own error, readable."""
    from tests.app.tiny_model import file_hashes

    version = tiny_store / "tiny" / "2"
    damage(version)
    edit_card(version, files=file_hashes(version))
    registry = registry_of(tiny_store)
    with pytest.raises(VersionFailed) as failed:
        registry.load("tiny", 2)
    assert re.match(reason, str(failed.value)), str(failed.value)
    assert "\n" not in str(failed.value) and len(str(failed.value)) <= 300
    assert registry.describe()["tiny"]["versions"]["2"]["reason"] == str(failed.value)


def test_failed_version_is_verified_again_only_when_its_files_change(tiny_store: Path) -> None:
    calls = []

    def flaky_loader(path: Path, card: ModelCard) -> ModelRuntime:
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup\nsecond line")
        return load_saved_model(path, card)

    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("leuk.store").addHandler(handler)
    registry = ModelRegistry(ModelStore(tiny_store), loader=flaky_loader)
    try:
        for _ in range(3):  # later attempts see the same files: not loaded again, not logged
            with pytest.raises(VersionFailed, match=r"^load failed: RuntimeError: disk hiccup$"):
                registry.load("tiny", 2)
    finally:
        logging.getLogger("leuk.store").removeHandler(handler)
    assert len(calls) == 1
    assert [(r.getMessage(), r.__dict__["version"]) for r in logged] == [("version failed", 2)]
    card = tiny_store / "tiny" / "2" / "model_card.json"
    stat = card.stat()
    os.utime(card, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert registry.load("tiny", 2).version == 2
    assert len(calls) == 2
    assert registry.describe()["tiny"]["versions"]["2"] == {
        "state": "ready",
        "reason": None,
        "batching": "stacked",
    }


def test_broken_newest_falls_back_to_last_good(tiny_store: Path) -> None:
    corrupt_variables(tiny_store / "tiny" / "2")
    registry = registry_of(tiny_store)
    assert registry.resolve("tiny").version == 1
    described = registry.describe()["tiny"]
    assert described["default_version"] == 1
    assert described["versions"]["2"]["state"] == "failed"
    assert described["versions"]["1"]["state"] == "ready"


def test_broken_pin_is_not_replaced(tiny_store: Path) -> None:
    corrupt_variables(tiny_store / "tiny" / "2")
    registry = registry_of(tiny_store)
    registry.pin("tiny", 2)
    with pytest.raises(ModelUnavailable, match="sha256 mismatch"):
        registry.resolve("tiny")
    registry.pin("tiny", 9)
    with pytest.raises(VersionNotFound):
        registry.resolve("tiny")


# --- the service over broken stores ------------------------------------------------------
async def assert_live_not_ready(client: httpx.AsyncClient, reason: str) -> None:
    assert (await client.get("/health/live")).status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert reason in ready.json()["error"]["detail"]
    health = await client.get("/health")
    assert health.status_code == 503 and health.json()["ready"] is False
    assert reason in health.json()["reason"]
    classify = await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
    assert classify.status_code == 503 and classify.json()["error"]["code"] == "not_ready"


@pytest.mark.anyio
async def test_service_keeps_serving_last_good_version(
    tiny_store: Path, make_settings: Callable[..., Settings]
) -> None:
    corrupt_variables(tiny_store / "tiny" / "2")
    async with serve(make_settings()) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["version"] == 1
        health = (await client.get("/health")).json()
        assert "serving last good version" in health["reason"]
        assert "sha256 mismatch" in health["models"]["tiny"]["versions"]["2"]["reason"]
        response = await client.post(
            "/v1/models/tiny/versions/2/classify",
            content=PNG,
            headers={"content-type": "image/png"},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_unavailable"
        ok = await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        assert ok.status_code == 200 and ok.json()["version"] == 1
        (tiny_store / "tiny" / "2" / "model_card.json").write_text("{broken")
        info = await client.get("/v1/models/tiny/versions/2")
        assert info.status_code == 503 and info.json()["error"]["code"] == "model_unavailable"


@pytest.mark.anyio
async def test_service_with_every_version_broken_stays_live(
    tiny_store: Path, make_settings: Callable[..., Settings]
) -> None:
    corrupt_variables(tiny_store / "tiny" / "1")
    corrupt_variables(tiny_store / "tiny" / "2")
    async with serve(make_settings()) as client:
        await assert_live_not_ready(client, "sha256 mismatch")
        # The other model is intact and can still be asked for by name.
        other = await client.post(
            "/v1/models/other/classify", content=PNG, headers={"content-type": "image/png"}
        )
        assert other.status_code == 200


@pytest.mark.anyio
async def test_service_with_broken_pin_is_not_ready(
    tiny_store: Path, make_settings: Callable[..., Settings]
) -> None:
    corrupt_variables(tiny_store / "tiny" / "2")
    async with serve(make_settings(model_version=2)) as client:
        await assert_live_not_ready(client, "sha256 mismatch")


@pytest.mark.anyio
@pytest.mark.parametrize("store_kind", ["missing", "empty", "no_default"])
async def test_service_without_usable_store_stays_live(
    tiny_store: Path, tmp_path: Path, make_settings: Callable[..., Settings], store_kind: str
) -> None:
    if store_kind == "missing":
        settings = make_settings(model_store=tmp_path / "nowhere")
    elif store_kind == "empty":
        (tmp_path / "empty").mkdir()
        settings = make_settings(model_store=tmp_path / "empty")
    else:
        (tiny_store / "DEFAULT").unlink()
        settings = make_settings()
    async with serve(settings) as client:
        await assert_live_not_ready(client, "default model")


@pytest.mark.anyio
async def test_default_model_setting_unknown(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(default_model="ghost")) as client:
        await assert_live_not_ready(client, "ghost")


@pytest.mark.anyio
async def test_not_ready_while_loading(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(), settle=False) as client:
        first = await client.get("/health/ready")
        live = await client.get("/health/live")
        assert live.status_code == 200
        if first.status_code == 503:  # load usually still running right after startup
            assert "starting" in first.json()["error"]["detail"]
        from tests.app.conftest import wait_until_settled

        await wait_until_settled(client.app)  # type: ignore[attr-defined]
        assert (await client.get("/health/ready")).status_code == 200


# --- store polling -----------------------------------------------------------------------
def _make_version(store: Path, source: Path, version: int) -> None:
    """Place a copy of ``source`` as ``version``: written aside, renamed in (as training does)."""
    tmp = store / "tiny" / f".tmp-{version}"
    shutil.copytree(source, tmp)
    edit_card(tmp, version=version)
    tmp.rename(store / "tiny" / str(version))


@pytest.mark.anyio
async def test_new_versions_are_picked_up_and_broken_ones_skipped(
    tiny_store: Path, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    import anyio.to_thread

    aside = tmp_path / "aside"
    shutil.move(tiny_store / "tiny" / "2", aside)
    async with serve(make_settings(store_poll_seconds=0)) as client:
        dataplane = client.app.state.dataplane  # type: ignore[attr-defined]
        assert (await client.get("/health/ready")).json()["version"] == 1
        _make_version(tiny_store, aside, 2)
        await anyio.to_thread.run_sync(dataplane.lifecycle.refresh)
        assert (await client.get("/health/ready")).json()["version"] == 2
        _make_version(tiny_store, aside, 3)
        corrupt_variables(tiny_store / "tiny" / "3")
        await anyio.to_thread.run_sync(dataplane.lifecycle.refresh)
        assert (await client.get("/health/ready")).json()["version"] == 2
        health = (await client.get("/health")).json()
        assert "version 3: sha256 mismatch" in health["reason"]
        metrics = (await client.get("/metrics")).text
        assert 'leuk_model_info{default="true",model="tiny",tensorflow=' in metrics
        assert metrics.count('default="true"') == 1  # only version 2 is the default now


@pytest.mark.anyio
async def test_pinned_service_ignores_new_versions(
    tiny_store: Path, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    import anyio.to_thread

    async with serve(make_settings(store_poll_seconds=0, model_version=1)) as client:
        _make_version(tiny_store, tiny_store / "tiny" / "2", 3)
        await anyio.to_thread.run_sync(client.app.state.dataplane.lifecycle.refresh)  # type: ignore[attr-defined]
        assert (await client.get("/health/ready")).json()["version"] == 1


@pytest.mark.anyio
async def test_not_ready_service_becomes_ready_when_a_model_lands(
    tiny_store_template: Path, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    import anyio

    store = tmp_path / "store"
    store.mkdir()
    async with serve(make_settings(model_store=store, store_poll_seconds=0.05)) as client:
        assert (await client.get("/health/ready")).status_code == 503
        shutil.copytree(tiny_store_template / "other", store / ".incoming")
        (store / ".incoming").rename(store / "other")
        with anyio.fail_after(60):
            while (await client.get("/health/ready")).status_code != 200:
                await anyio.sleep(0.05)
        assert (await client.get("/health/ready")).json()["model"] == "other"
