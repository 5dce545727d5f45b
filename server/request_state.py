"""What the middleware and the routes share about one HTTP request, in one typed object.

The middleware creates it when a request arrives and reads it back once the response is sent
(status, mode and duration go to the metrics and the access log); the routes fill it in.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope

_KEY = "crop_request"


@dataclass
class RequestState:
    request_id: str
    #: `time.perf_counter()` at arrival.
    started: float
    #: The CROP mode the client asked for ("unknown" until the body is read).
    crop_mode: str = "unknown"
    #: The client went away before the response was complete (counted as 499).
    client_gone: bool = False
    #: The status of a stream that failed after its 200 was sent.
    stream_status: int | None = None

    def attach(self, scope: Scope) -> None:
        scope.setdefault("state", {})[_KEY] = self

    @staticmethod
    def of(scope: Scope) -> RequestState:
        return scope["state"][_KEY]
