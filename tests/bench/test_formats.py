"""bench/formats.py sends what the service's Open Inference Protocol parser accepts."""

from __future__ import annotations

from pathlib import Path

from app.protocols.oip import _bytes_elements, _single_input, _split_body
from bench.formats import FORMATS, bodies, oip_body
from bench.run import DEFAULT_IMAGE


def test_oip_body_carries_the_exact_image() -> None:
    image = DEFAULT_IMAGE.read_bytes()
    body, header_length = oip_body(image)
    request, binary = _split_body(body, str(header_length))
    tensor, data = _single_input(request, binary)
    assert tensor.name == "image_file" and data is not None
    assert _bytes_elements(data) == [image]
    assert request.parameters == {"binary_data_output": True}


def test_every_format_has_a_body(tmp_path: Path) -> None:
    found = bodies(DEFAULT_IMAGE, tmp_path)
    assert set(found) == set(FORMATS)
    assert dict(found["fhir"].headers) == {"Accept": "application/fhir+json"}
    assert "Inference-Header-Content-Length" in dict(found["oip"].headers)
