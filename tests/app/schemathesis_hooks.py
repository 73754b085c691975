"""schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by test_openapi_conformance.py).

The schema types an image as a binary string; random bytes are not an image, and the
service rightly refuses them (422). Schema-valid requests carry real images here, so
schemathesis' "valid data is accepted" check applies to the classify endpoints too.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from tests.app.images import cell_like, encode

_FORMATS = {"image/png": "PNG", "image/bmp": "BMP", "image/jpeg": "JPEG", "image/tiff": "TIFF"}
_IMAGES = {
    media: [encode(cell_like(seed, size=64), fmt) for seed in (1, 2)]
    for media, fmt in _FORMATS.items()
}

for _media, _images in _IMAGES.items():
    schemathesis.openapi.media_type(_media, st.sampled_from(_images))
schemathesis.openapi.format(
    "binary", st.sampled_from([image for images in _IMAGES.values() for image in images])
)
