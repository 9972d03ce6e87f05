"""A stop asked for before the event loop runs.

A rolling restart may send SIGTERM while a new instance is still importing
or connecting. Python's default answer is to die (exit -15), leaving
whatever was half started; a service should instead stop as cleanly as it
would a minute later. So the command line records SIGTERM and SIGINT from
its first line (``install``); ``consumers.app.runtime`` then gives the loop
its own handlers and, if a stop was already asked for (``take``), sets its
stop event at once: the service starts, sees the stop, and shuts down in
order. A command that is not a service gets the default handlers back
(``uninstall``) and exits as the signal would have made it.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: list[int] = []
_previous: dict[int, Any] = {}


def _record(signum: int, _frame: FrameType | None) -> None:
    _requested.append(signum)


def install() -> None:
    """Record SIGTERM and SIGINT instead of acting on them (main thread only; idempotent)."""
    if _previous:
        return
    for sig in _SIGNALS:
        _previous[sig] = signal.signal(sig, _record)


def uninstall() -> int | None:
    """Put the previous handlers back; the first signal recorded and not taken, if any."""
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()
    pending = _requested[0] if _requested else None
    _requested.clear()
    return pending


def take() -> bool:
    """Whether a stop was asked for before the loop's own handlers took over (and forget it)."""
    asked = bool(_requested)
    _requested.clear()
    return asked
