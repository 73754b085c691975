"""Open Inference Protocol (KServe v2) with the unmodified Triton HTTP client from PyPI.

tritonclient speaks plain HTTP over a socket, so the real app runs under uvicorn on
127.0.0.1 in a background thread (one server for the module: the tiny test models).
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import uvicorn
from tritonclient.utils import InferenceServerException

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import CNMC_BMP, CNMC_PNGS, OOD_JPEGS, serve
from tests.app.images import decode_rgb

PNG = CNMC_PNGS[0].read_bytes()


@pytest.fixture(scope="module")
def server(tiny_store_template: Path) -> Iterator[str]:
    settings = Settings(
        model_store=tiny_store_template, warmup_batch_sizes=[1], store_poll_seconds=0
    )
    app = create_app(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not (uvicorn_server.started and app.state.dataplane.lifecycle.ready):
        assert time.monotonic() < deadline, "server did not become ready"
        assert thread.is_alive(), "server thread died"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=server, network_timeout=120) as c:
        yield c


def _file_input(files: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image_file", [len(files)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    else:  # JSON carries strings: the files go base64-encoded
        encoded = [base64.b64encode(f) for f in files]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return tensor


def _outputs(binary: bool) -> list[triton.InferRequestedOutput]:
    names = ("probabilities", "label", "out_of_distribution")
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "leukaemia-cell-service"
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "2") and not client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("other")  # in the store, not loaded yet
    assert not client.is_model_ready("nope") and not client.is_model_ready("tiny", "9")


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("tiny")
    assert metadata["name"] == "tiny" and metadata["versions"] == ["1", "2"]
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    assert inputs == {"image_file": ("BYTES", [-1]), "pixels": ("UINT8", [-1, -1, -1, 3])}
    outputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]}
    assert outputs == {
        "probabilities": ("FP32", [-1, 2]),
        "label": ("BYTES", [-1]),
        "out_of_distribution": ("BOOL", [-1]),
    }
    assert len(metadata["parameters"]["saved_model_sha256"]) == 64
    assert metadata["parameters"]["intended_use"]
    assert client.get_model_metadata("tiny", "1")["name"] == "tiny"
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("nope")
    assert missing.value.status() == "404" and "nope" in missing.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_image_files_matches_native_api(
    client: triton.InferenceServerClient, server: str, binary: bool
) -> None:
    files = [PNG, CNMC_BMP.read_bytes(), OOD_JPEGS[0].read_bytes()]
    result = client.infer("tiny", [_file_input(files, binary)], outputs=_outputs(binary))
    probabilities = result.as_numpy("probabilities")
    labels = [str(x, "utf-8") if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    ood = result.as_numpy("out_of_distribution")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 2)
    assert ood.tolist() == [False, False, True]
    response = result.get_response()
    assert response["model_name"] == "tiny" and response["model_version"] == "2"
    assert response["parameters"]["intended_use"]
    assert len(response["parameters"]["saved_model_sha256"]) == 64
    for index, data in enumerate(files):  # the native API, one image per call
        native = httpx.post(
            f"http://{server}/v1/classify",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=60,
        ).json()["results"][0]
        assert labels[index] == native["label"]
        assert probabilities[index].tolist() == pytest.approx(
            [native["probabilities"]["hem"], native["probabilities"]["all"]], abs=1e-5
        )


def test_infer_default_outputs_are_binary(client: triton.InferenceServerClient) -> None:
    # No outputs requested: tritonclient asks for every output in binary form.
    result = client.infer("tiny", [_file_input([PNG], binary=True)], model_version="2")
    assert result.as_numpy("probabilities").shape == (1, 2)
    assert result.get_output("label")["parameters"]["binary_data_size"] > 0


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_pixels_same_as_file(client: triton.InferenceServerClient, binary: bool) -> None:
    pixels = decode_rgb(PNG)[None]
    tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    by_pixels = client.infer("tiny", [tensor], outputs=_outputs(binary))
    by_file = client.infer("tiny", [_file_input([PNG], True)], outputs=_outputs(True))
    assert by_pixels.as_numpy("probabilities") == pytest.approx(
        by_file.as_numpy("probabilities"), abs=1e-6
    )
    assert by_pixels.as_numpy("out_of_distribution").tolist() == [False]


def test_bad_inputs_get_protocol_errors(client: triton.InferenceServerClient, server: str) -> None:
    wrong = triton.InferInput("image", [1], "BYTES")  # not an input of the model
    wrong.set_data_from_numpy(np.array([PNG], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("tiny", [wrong])
    assert unknown.value.status() == "400" and "image_file" in unknown.value.message()

    with pytest.raises(InferenceServerException) as undecodable:
        client.infer("tiny", [_file_input([b"not an image"], binary=True)])
    assert undecodable.value.status() == "422"

    pixels = np.zeros((1, 4, 4, 4), dtype=np.uint8)  # four channels
    tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    with pytest.raises(InferenceServerException) as channels:
        client.infer("tiny", [tensor])
    assert channels.value.status() == "400"

    with pytest.raises(InferenceServerException) as no_model:
        client.infer("nope", [_file_input([PNG], binary=True)])
    assert no_model.value.status() == "404"

    raw = httpx.post(f"http://{server}/v2/models/tiny/infer", content=b"{not json", timeout=60)
    assert raw.status_code == 400 and set(raw.json()) == {"error"}
    bad_length = httpx.post(
        f"http://{server}/v2/models/tiny/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "99"},
        timeout=60,
    )
    assert bad_length.status_code == 400 and "Inference-Header" in bad_length.json()["error"]
    floats = {"inputs": [{"name": "pixels", "shape": [1, 1, 1, 3], "datatype": "UINT8",
                          "data": [0.5, 1, 2]}]}  # fmt: skip
    not_uint8 = httpx.post(f"http://{server}/v2/models/tiny/infer", json=floats, timeout=60)
    assert not_uint8.status_code == 400 and "0..255" in not_uint8.json()["error"]
    no_version = httpx.get(f"http://{server}/v2/models/tiny/versions/9/ready", timeout=60)
    assert no_version.status_code == 404 and set(no_version.json()) == {"error"}


@pytest.mark.anyio
async def test_api_keys_cover_the_protocol_but_not_its_probes(tiny_store: Path) -> None:
    settings = Settings(
        model_store=tiny_store, warmup_batch_sizes=[1], store_poll_seconds=0, api_keys=["k"]
    )
    async with serve(settings) as c:
        assert (await c.get("/v2/health/live")).status_code == 200
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}
        assert (await c.get("/v2/models/tiny")).status_code == 401
        body = {"inputs": [{"name": "image_file", "shape": [1], "datatype": "BYTES",
                            "data": [base64.b64encode(PNG).decode()]}]}  # fmt: skip
        assert (await c.post("/v2/models/tiny/infer", json=body)).status_code == 401
        ok = await c.post("/v2/models/tiny/infer", json=body, headers={"X-API-Key": "k"})
        assert ok.status_code == 200 and ok.json()["outputs"][1]["data"][0] in ("all", "hem")
