"""Every endpoint and every bad input, through httpx against the real app (tiny test models)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.app.conftest import CNMC_BMP, CNMC_PNGS, OOD_JPEGS, serve
from tests.app.images import cell_like, encode

pytestmark = pytest.mark.anyio

PNG = CNMC_PNGS[0].read_bytes()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["detail"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]


def metric_value(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- health and info ---------------------------------------------------------------------
async def test_health_endpoints_when_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "live"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": "tiny", "version": 2}
    summary = (await client.get("/health")).json()
    assert summary["ready"] is True and summary["status"] == "ready"
    assert summary["default_model"] == "tiny" and summary["default_version"] == 2
    assert set(summary["models"]) == {"tiny", "other"}
    assert summary["models"]["tiny"]["versions"]["2"]["state"] == "ready"


async def test_model_info_has_the_card(client: httpx.AsyncClient, tiny_store: Path) -> None:
    info = (await client.get("/model-info")).json()
    assert info["name"] == "tiny" and info["served_version"] == 2
    assert info["labels"] == ["hem", "all"] and info["positive_label"] == "all"
    assert info["threshold"] == 0.5
    assert info["input"]["input_name"] == "images" and info["input"]["dtype"] == "uint8"
    assert "saved_model.pb" in info["files"] and len(info["files"]["saved_model.pb"]) == 64
    assert info["intended_use"] and info["metrics"] and info["data"]
    assert info["framework"]["tensorflow"]
    assert info["load_seconds"] > 0 and info["loaded_at"]
    assert "out_of_distribution" in info["input_checks"]
    assert set(info["versions"]) == {"1", "2"}


async def test_model_info_by_name_and_version(client: httpx.AsyncClient) -> None:
    other = (await client.get("/v1/models/other")).json()
    assert other["name"] == "other" and other["threshold"] == 0.3
    assert other["state"] == "available" and other["load_seconds"] is None  # not loaded yet
    v1 = (await client.get("/v1/models/tiny/versions/1")).json()
    assert v1["name"] == "tiny" and v1["files"]
    listing = (await client.get("/v1/models")).json()
    assert listing["default_model"] == "tiny" and set(listing["models"]) == {"tiny", "other"}
    assert_error(await client.get("/v1/models/nope"), 404, "model_not_found")
    assert (await client.get("/v1/models/tiny/ready")).json()["version"] == 2
    assert_error(await client.get("/v1/models/other/ready"), 503, "not_ready")
    assert_error(await client.get("/v1/models/nope/ready"), 404, "model_not_found")
    assert_error(await client.get("/v1/models/tiny/versions/9"), 404, "version_not_found")
    assert_error(await client.get("/v1/models/tiny/versions/x"), 404, "version_not_found")


@pytest.mark.parametrize(
    "version",
    [
        "%C2%B2",  # superscript two: str.isdigit() is True, int() raises
        "%D9%A1",  # Arabic-Indic one: int() reads it as 1
        "%EF%BC%91",  # fullwidth one
        "01",  # leading zero would alias version 1
        "0",
        "-1",
        "+1",
        "1%20",
        "1_0",
        "9" * 10,  # longer than any version: never parsed
        "9" * 5000,
    ],
)
async def test_only_plain_ascii_versions_name_a_version(
    client: httpx.AsyncClient, version: str
) -> None:
    assert_error(await client.get(f"/v1/models/tiny/versions/{version}"), 404, "version_not_found")
    classify = await client.post(
        f"/v1/models/tiny/versions/{version}/classify",
        content=PNG,
        headers={"content-type": "image/png"},
    )
    assert_error(classify, 404, "version_not_found")
    # The Open Inference Protocol routes parse the path parameter the same way (their
    # errors have the protocol's shape, a message only).
    oip = await client.get(f"/v2/models/tiny/versions/{version}")
    assert oip.status_code == 404 and oip.json()["error"].startswith("Versions are positive")
    assert (await client.get("/v1/models/tiny/versions/1")).status_code == 200


# --- classify ----------------------------------------------------------------------------
async def test_classify_raw_png(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["model"] == "tiny" and body["version"] == 2 and body["summary"] is None
    (result,) = body["results"]
    assert set(result["probabilities"]) == {"hem", "all"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert result["blast_probability"] == result["probabilities"]["all"]
    expected = "all" if result["blast_probability"] >= result["threshold"] else "hem"
    assert result["label"] == expected
    assert result["out_of_distribution"] is False and result["warnings"] == []


@pytest.mark.parametrize(
    "content_type", ["image/bmp", "image/x-ms-bmp", "application/octet-stream"]
)
async def test_classify_raw_bmp(client: httpx.AsyncClient, content_type: str) -> None:
    bmp = await client.post(
        "/v1/classify", content=CNMC_BMP.read_bytes(), headers={"content-type": content_type}
    )
    png_same_pixels = CNMC_BMP.with_suffix(".png").name
    png_path = next(p for p in CNMC_PNGS if p.name == png_same_pixels)
    png = await client.post(
        "/v1/classify", content=png_path.read_bytes(), headers={"content-type": "image/png"}
    )
    assert bmp.status_code == 200 and png.status_code == 200
    assert bmp.json()["results"][0]["probabilities"] == png.json()["results"][0]["probabilities"]


async def test_classify_multipart_many_images_with_summary(client: httpx.AsyncClient) -> None:
    files = [("files", (f"x{i}.png", p.read_bytes(), "image/png")) for i, p in enumerate(CNMC_PNGS)]
    files.append(("files", ("ood.jpg", OOD_JPEGS[0].read_bytes(), "image/jpeg")))
    response = await client.post("/v1/classify", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(files)))
    summary = body["summary"]
    assert summary["n_images"] == len(files)
    assert sum(summary["counts"].values()) == len(files)
    n_all = sum(r["label"] == "all" for r in results)
    assert summary["counts"]["all"] == n_all
    assert summary["blast_fraction"] == pytest.approx(n_all / len(files))
    assert summary["n_out_of_distribution"] == 1
    in_dist = [r for r in results if not r["out_of_distribution"]]
    assert summary["blast_fraction_in_distribution"] == pytest.approx(
        sum(r["label"] == "all" for r in in_dist) / len(in_dist)
    )
    flagged = results[-1]
    assert flagged["out_of_distribution"] is True
    assert flagged["warnings"][0].startswith("out_of_distribution")
    assert "no_black_background" in flagged["input_check"]["reasons"]


async def test_classify_single_file_field_name(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/classify", files={"file": ("a.png", PNG, "image/png")})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


async def test_multipart_results_equal_raw_results(client: httpx.AsyncClient) -> None:
    raw = await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
    multi = await client.post("/v1/classify", files={"files": ("a.png", PNG, "image/png")})
    assert raw.json()["results"][0]["probabilities"] == multi.json()["results"][0]["probabilities"]


async def test_classify_named_model_and_version(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "image/png"}
    other = (await client.post("/v1/models/other/classify", content=PNG, headers=headers)).json()
    assert other["model"] == "other" and other["version"] == 1
    assert other["results"][0]["threshold"] == 0.3
    v1 = await client.post("/v1/models/tiny/versions/1/classify", content=PNG, headers=headers)
    v2 = await client.post("/v1/models/tiny/versions/2/classify", content=PNG, headers=headers)
    assert v1.json()["version"] == 1 and v2.json()["version"] == 2
    # Different weights: the versions really are different models.
    assert v1.json()["results"][0]["probabilities"] != v2.json()["results"][0]["probabilities"]
    default = (await client.post("/v1/classify", content=PNG, headers=headers)).json()
    assert default["results"][0]["probabilities"] == v2.json()["results"][0]["probabilities"]
    models = (await client.get("/health")).json()["models"]
    assert models["other"]["versions"]["1"]["state"] == "ready"


async def test_pinned_version_is_served(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(model_version=1)) as client:
        ready = (await client.get("/health/ready")).json()
        assert ready["version"] == 1
        body = (
            await client.post("/v1/classify", content=PNG, headers={"content-type": "image/png"})
        ).json()
        assert body["version"] == 1


# --- bad input ---------------------------------------------------------------------------
async def test_empty_bodies(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post("/v1/classify", content=b"", headers={"content-type": "image/png"}),
        400,
        "empty_body",
    )
    assert_error(await client.post("/v1/classify"), 400, "empty_body")


async def test_non_image_and_truncated(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "image/png"}
    assert_error(
        await client.post("/v1/classify", content=b"%PDF-1.4 not an image", headers=headers),
        422,
        "invalid_image",
    )
    assert_error(
        await client.post("/v1/classify", content=PNG[: len(PNG) // 2], headers=headers),
        422,
        "truncated_image",
    )


async def test_one_bad_image_in_many_names_its_index(client: httpx.AsyncClient) -> None:
    files = [
        ("files", ("a.png", PNG, "image/png")),
        ("files", ("b.png", b"garbage", "image/png")),
    ]
    response = await client.post("/v1/classify", files=files)
    assert_error(response, 422, "invalid_image")
    assert response.json()["error"]["detail"].startswith("Image 1:")


async def test_decompression_bomb(client: httpx.AsyncClient) -> None:
    from PIL import Image

    bomb = encode(Image.new("1", (12000, 12000)), "PNG")
    response = await client.post(
        "/v1/classify", content=bomb, headers={"content-type": "image/png"}
    )
    assert_error(response, 413, "image_too_large")


async def test_request_pixel_limit_counts_every_image(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(make_settings(max_request_pixels=2 * 450 * 450)) as client:
        two = [("files", (f"{i}.png", PNG, "image/png")) for i in range(2)]
        assert (await client.post("/v1/classify", files=two)).status_code == 200
        three = [*two, ("files", ("2.png", PNG, "image/png"))]
        response = await client.post("/v1/classify", files=three)
        assert_error(response, 413, "request_too_large_decoded")
        assert "607500 pixels" in response.json()["error"]["detail"]


async def test_decoding_memory_budget(make_settings: Callable[..., Settings]) -> None:
    raw = {"content": PNG, "headers": {"content-type": "image/png"}}
    async with serve(make_settings(max_decode_bytes=8 * 1024 * 1024)) as client:
        budget = client.app.state.dataplane.decode_budget  # type: ignore[attr-defined]
        assert (await client.post("/v1/classify", **raw)).status_code == 200
        assert budget.in_flight == 0
        others = budget.reservation()  # what other requests' images hold
        others.take(budget.capacity - 1024 * 1024)  # a 450x450 image needs ~3.8 MB
        busy = await client.post("/v1/classify", **raw)
        assert_error(busy, 503, "decode_memory_busy")
        assert busy.headers["retry-after"] == "1"
        others.release_all()
        assert (await client.post("/v1/classify", **raw)).status_code == 200
        truncated = {"content": PNG[: len(PNG) // 2], "headers": raw["headers"]}
        assert_error(await client.post("/v1/classify", **truncated), 422, "truncated_image")
        assert budget.in_flight == 0  # given back after answers and after failures
    async with serve(make_settings(max_decode_bytes=2 * 1024 * 1024)) as client:
        # Could never fit, even alone: 413, not a 503 the client would retry forever.
        assert_error(await client.post("/v1/classify", **raw), 413, "request_too_large_decoded")


async def test_wrong_field_and_text_field(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post("/v1/classify", files={"image": ("a.png", PNG, "image/png")}),
        422,
        "unexpected_field",
    )
    assert_error(
        await client.post("/v1/classify", data={"files": "not a file"}, files={"x": ("", b"")}),
        422,
        "unexpected_field",
    )


async def test_wrong_content_type(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post("/v1/classify", content=PNG, headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_error(
        await client.post("/v1/classify", json={"image": "base64..."}),
        415,
        "unsupported_media_type",
    )


async def test_broken_multipart(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/classify",
        content=b'--xyz\r\nContent-Disposition: form-data; name="files"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code in (400, 422)
    assert response.json()["error"]["code"] in ("invalid_multipart", "missing_images")


async def test_too_many_files(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(max_files=3)) as client:
        ok = [("files", (f"{i}.png", PNG, "image/png")) for i in range(3)]
        assert (await client.post("/v1/classify", files=ok)).status_code == 200
        too_many = [("files", (f"{i}.png", PNG, "image/png")) for i in range(4)]
        assert_error(await client.post("/v1/classify", files=too_many), 413, "too_many_files")


async def test_upload_over_limit_by_content_length(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(max_upload_bytes=50_000)) as client:
        big = encode(cell_like(1), "BMP")  # ~600 KB
        response = await client.post(
            "/v1/classify", content=big, headers={"content-type": "image/bmp"}
        )
        assert_error(response, 413, "payload_too_large")
        small = encode(cell_like(1, size=100), "PNG")
        ok = await client.post("/v1/classify", content=small, headers={"content-type": "image/png"})
        assert ok.status_code == 200


async def test_chunked_upload_over_limit_is_not_read_to_the_end(
    make_settings: Callable[..., Settings],
) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b"\x00" * 4096

    async with serve(make_settings(max_upload_bytes=64 * 1024)) as client:
        response = await client.post(
            "/v1/classify", content=body(), headers={"content-type": "image/bmp"}
        )
        assert_error(response, 413, "payload_too_large")
        assert "content-length" not in response.request.headers
    assert sent < 100  # refused after ~16 chunks of 1000


async def test_declared_length_over_limit_reads_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    """Raw ASGI call: Content-Length alone decides, the body is never received."""
    async with serve(make_settings(max_upload_bytes=10_000)) as client:
        app = client.app  # type: ignore[attr-defined]
        received = 0
        messages: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            nonlocal received
            received += 1
            return {"type": "http.request", "body": b"\x00" * 1000, "more_body": True}

        async def send(message: dict[str, object]) -> None:
            messages.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/classify",
            "raw_path": b"/v1/classify",
            "query_string": b"",
            "root_path": "",
            "client": ("127.0.0.1", 1),
            "server": ("t", 80),
            "headers": [(b"content-type", b"image/bmp"), (b"content-length", b"999999999")],
        }
        await app(scope, receive, send)
        assert messages[0]["status"] == 413
        assert received == 0


async def test_unknown_model_and_version(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "image/png"}
    assert_error(
        await client.post("/v1/models/nope/classify", content=PNG, headers=headers),
        404,
        "model_not_found",
    )
    assert_error(
        await client.post("/v1/models/tiny/versions/7/classify", content=PNG, headers=headers),
        404,
        "version_not_found",
    )
    assert_error(
        await client.post("/v1/models/tiny/versions/0/classify", content=PNG, headers=headers),
        404,
        "version_not_found",
    )
    metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "leuk_inputs_rejected_total", reason="model_not_found") == 1
    assert metric_value(metrics, "leuk_inputs_rejected_total", reason="version_not_found") == 2


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v2/whatever"), 404, "not_found")
    assert_error(await client.get("/v1/classify"), 405, "method_not_allowed")
    assert_error(await client.delete("/health/live"), 405, "method_not_allowed")


# --- request IDs -------------------------------------------------------------------------
async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    mine = await client.get("/health/live", headers={"x-request-id": "lab-42.a:b_c"})
    assert mine.headers["x-request-id"] == "lab-42.a:b_c"
    generated = await client.get("/health/live")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    bad = await client.get("/health/live", headers={"x-request-id": "x" * 300})
    assert bad.headers["x-request-id"] != "x" * 300
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    err = await client.get("/missing", headers={"x-request-id": "trace-1"})
    assert err.json()["error"]["request_id"] == "trace-1"
    ok = await client.post(
        "/v1/classify", content=PNG, headers={"content-type": "image/png", "x-request-id": "r-9"}
    )
    assert ok.json()["request_id"] == "r-9" and ok.headers["x-request-id"] == "r-9"


# --- metrics -----------------------------------------------------------------------------
async def test_metrics_change_as_requests_are_served(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    headers = {"content-type": "image/png"}
    ok = await client.post("/v1/classify", content=PNG, headers=headers)
    label = ok.json()["results"][0]["label"]
    await client.post("/v1/classify", content=b"junk", headers=headers)
    await client.post("/v1/classify", content=OOD_JPEGS[0].read_bytes(), headers=headers)
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("leuk_http_requests_total", route="/v1/classify", status="200") == 2
    assert delta("leuk_http_requests_total", route="/v1/classify", status="422") == 1
    assert delta("leuk_images_classified_total", model="tiny", version="2", label=label) >= 1
    assert delta("leuk_inputs_rejected_total", reason="invalid_image") == 1
    assert delta("leuk_images_out_of_distribution_total", model="tiny", version="2") == 1
    assert delta("leuk_inference_batch_size_count", model="tiny", version="2") >= 1
    assert delta("leuk_queue_wait_seconds_count") == 2
    assert delta("leuk_http_request_duration_seconds_count", route="/v1/classify") == 3
    assert metric_value(after, "leuk_model_load_seconds", model="tiny", version="2") > 0
    assert metric_value(after, "leuk_model_info", model="tiny", version="2", default="true") == 1
    assert metric_value(after, "leuk_ready") == 1


# --- security ----------------------------------------------------------------------------
async def test_auth_off_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/model-info")).status_code == 200


async def test_auth_on(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# lab keys\nfile-key-1\n\n")
    settings = make_settings(api_keys=["env-key-1"], api_keys_file=key_file)
    async with serve(settings) as client:
        # Orchestrator probes stay open.
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200
        for method, path in [
            ("GET", "/health"),
            ("GET", "/metrics"),
            ("GET", "/model-info"),
            ("GET", "/v1/models"),
            ("POST", "/v1/classify"),
            ("GET", "/nope"),
            ("GET", "/docs/assets"),
            ("GET", "/docsx"),
            ("GET", "/openapi.json/x"),
        ]:
            assert_error(await client.request(method, path), 401, "unauthorized")
        assert_error(
            await client.get("/metrics", headers={"x-api-key": "wrong"}), 401, "unauthorized"
        )
        assert_error(
            await client.get("/metrics", headers={"authorization": "Basic env-key-1"}),
            401,
            "unauthorized",
        )
        assert (await client.get("/metrics", headers={"x-api-key": "env-key-1"})).status_code == 200
        bearer = {"authorization": "Bearer file-key-1"}
        assert (await client.get("/model-info", headers=bearer)).status_code == 200
        ok = await client.post(
            "/v1/classify", content=PNG, headers={**bearer, "content-type": "image/png"}
        )
        assert ok.status_code == 200
        metrics = (await client.get("/metrics", headers=bearer)).text
        # Auth runs before routing, so refused requests are counted under "<unmatched>".
        assert (
            metric_value(
                metrics,
                "leuk_http_requests_total",
                route="<unmatched>",
                method="POST",
                status="401",
            )
            == 1
        )


async def test_docs_are_public_when_keys_are_on(make_settings: Callable[..., Settings]) -> None:
    """A browser cannot attach a key to the page's script and stylesheet requests: the docs
    (no patient data in them) stay open; the API calls made from the page need a key."""
    async with serve(make_settings(api_keys=["k"])) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
            assert (await client.get(f"/docs/assets/{asset}")).status_code == 200, asset
        assert_error(await client.get("/docs/assets/nope.js"), 404, "not_found")
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.1")
        assert_error(await client.get("/model-info"), 401, "unauthorized")
        # The schema says what is enforced: keys required, except on the open paths.
        assert {} not in spec["security"] and {"ApiKeyHeader": []} in spec["security"]
        assert spec["paths"]["/health/live"]["get"]["security"] == []
        assert "security" not in spec["paths"]["/model-info"]["get"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-api-key": "", "authorization": "Bearer good"}, 200),
        ({"x-api-key": "wrong", "authorization": "Bearer good"}, 200),
        ({"x-api-key": "good", "authorization": "Bearer wrong"}, 200),
        ({"x-api-key": "  good  "}, 200),
        ({"authorization": "bearer good"}, 200),
        ({"x-api-key": "", "authorization": "Bearer "}, 401),
        ({"x-api-key": "wrong", "authorization": "Bearer wrong"}, 401),
        ({"authorization": "Basic good"}, 401),
        ({"x-api-key": "goodx"}, 401),
    ],
)
async def test_a_valid_key_in_either_header_authenticates(
    make_settings: Callable[..., Settings], headers: dict[str, str], status: int
) -> None:
    async with serve(make_settings(api_keys=["good"])) as client:
        response = await client.get("/model-info", headers=headers)
        if status == 200:
            assert response.status_code == 200, response.text
        else:
            assert_error(response, status, "unauthorized")


async def test_non_ascii_keys_match_their_utf8_bytes(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("clé-fichier-ü\n", encoding="utf-8")
    monkeypatch.setenv("LEUK_API_KEYS", "ключ-env")
    settings = Settings(
        model_store=make_settings().model_store,
        warmup_batch_sizes=[1],
        store_poll_seconds=0,
        api_keys_file=key_file,
    )
    assert settings.load_api_keys() == ["ключ-env", "clé-fichier-ü"]
    async with serve(settings) as client:
        for key in ("ключ-env", "clé-fichier-ü"):
            raw = key.encode("utf-8")  # httpx refuses non-ASCII str header values
            for headers in ({"x-api-key": raw}, {"authorization": b"Bearer " + raw}):
                response = await client.get("/model-info", headers=headers)
                assert response.status_code == 200, (key, response.text)
        # The same key read as Latin-1 bytes is another key.
        latin1 = {"x-api-key": "clé-fichier-ü".encode("latin-1")}
        assert_error(await client.get("/model-info", headers=latin1), 401, "unauthorized")


async def test_cors_off_unless_configured(make_settings: Callable[..., Settings]) -> None:
    preflight = {"origin": "https://lab.example", "access-control-request-method": "POST"}
    async with serve(make_settings()) as client:
        response = await client.options("/v1/classify", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        get = await client.get("/health/live", headers={"origin": "https://lab.example"})
        assert "access-control-allow-origin" not in get.headers
    async with serve(make_settings(cors_origins=["https://lab.example"])) as client:
        response = await client.options("/v1/classify", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://lab.example"
        other = await client.options(
            "/v1/classify", headers={**preflight, "origin": "https://evil.example"}
        )
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


# --- OpenAPI -----------------------------------------------------------------------------
async def test_openapi_documents_every_endpoint_and_errors(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        "/health/live": "get",
        "/health/ready": "get",
        "/health": "get",
        "/model-info": "get",
        "/v1/models": "get",
        "/v1/models/{name}": "get",
        "/v1/models/{name}/versions/{version}": "get",
        "/v1/models/{name}/ready": "get",
        "/v1/classify": "post",
        "/v1/models/{name}/classify": "post",
        "/v1/models/{name}/versions/{version}/classify": "post",
        "/metrics": "get",
    }
    for path, method in expected.items():
        assert method in paths[path], path
    classify = paths["/v1/classify"]["post"]
    for status in ("400", "401", "404", "413", "415", "422", "503"):
        assert status in classify["responses"], status
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert "image/bmp" in classify["requestBody"]["content"]
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert "ApiKeyHeader" in spec["components"]["securitySchemes"]
    assert "503" in paths["/health/ready"]["get"]["responses"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Everything the page loads comes from the service itself: it works with no internet.
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f'"/docs/assets/{asset}"' in docs.text
        served = await client.get(f"/docs/assets/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000, asset
    assert spec["openapi"].startswith("3.1")
    # Swagger UI 4.x cannot render OpenAPI 3.1 ("Unable to render this definition").
    bundle = (await client.get("/docs/assets/swagger-ui-bundle.js")).text
    assert re.search(r'PACKAGE_VERSION:"5\.\d+\.\d+"', bundle), "not Swagger UI 5"
    assert (await client.get("/redoc")).status_code == 404
