"""Stopping a long loop at a step boundary: SIGINT and SIGTERM are recorded, not raised, so the loop
finishes its step, saves its state and raises ``TrainingInterrupted`` with the command that continues."""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once the current step's state is safely written."""


class StopRequests:
    """While entered (in the main thread), SIGINT and SIGTERM set ``signal`` instead of interrupting."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
