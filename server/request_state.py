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
    #: Seconds spent waiting for the engine's answers (None: the engine was never called).
    engine_seconds: float | None = None
    #: Seconds of the localization stage.
    localizer_seconds: float = 0.0

    def overhead_seconds(self, elapsed: float) -> float | None:
        """The gateway's own share of `elapsed`: outside the engine call and the localizer."""
        if self.engine_seconds is None:
            return None
        return max(elapsed - self.engine_seconds - self.localizer_seconds, 0.0)

    def attach(self, scope: Scope) -> None:
        scope.setdefault("state", {})[_KEY] = self

    @staticmethod
    def of(scope: Scope) -> RequestState:
        return scope["state"][_KEY]
