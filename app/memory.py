"""The service-wide budget of decoded-image memory: where the 503 decode_memory_busy is decided.

Pillow decodes a whole image into memory, so the bytes an upload costs are known from its
header before decoding (app.imaging.OpenedImage). Each request holds a ``Reservation``: bytes
are taken from the shared budget before an image is decoded, the decode buffers are given
back as soon as it is decoded, and the kept pixels when the request is answered. A request
that does not fit is refused at once (503 with Retry-After) rather than queued: waiting while
holding part of the budget could leave every request waiting for the others.
"""

from __future__ import annotations

import threading

from app.errors import DecodeMemoryBusy, RequestTooLargeDecoded


class DecodeBudget:
    """Thread-safe count of decoded-image bytes in flight, at most ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def reservation(self) -> Reservation:
        return Reservation(self)

    def take(self, nbytes: int, already_held: int) -> None:
        if already_held + nbytes > self.capacity:
            raise RequestTooLargeDecoded(
                f"Decoding this request needs about {already_held + nbytes} bytes; "
                f"the service's decoding budget is {self.capacity} bytes."
            )
        with self._lock:
            if self._in_flight + nbytes > self.capacity:
                raise DecodeMemoryBusy(headers={"Retry-After": "1"})
            self._in_flight += nbytes

    def give_back(self, nbytes: int) -> None:
        with self._lock:
            self._in_flight -= nbytes


class Reservation:
    """The bytes one request holds; ``release_all`` when it is answered (or failed)."""

    def __init__(self, budget: DecodeBudget) -> None:
        self._budget = budget
        self.held = 0

    def take(self, nbytes: int) -> None:
        self._budget.take(nbytes, self.held)
        self.held += nbytes

    def give_back(self, nbytes: int) -> None:
        nbytes = min(nbytes, self.held)
        self._budget.give_back(nbytes)
        self.held -= nbytes

    def release_all(self) -> None:
        self.give_back(self.held)
