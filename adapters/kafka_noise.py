"""Keep aiokafka's retry noise out of the operator's log.

During a broker outage aiokafka logs every reconnect and metadata attempt at
WARNING or ERROR: hundreds of lines a second, exactly when someone reads the
log. ``RepeatedClientErrors`` lets the first line of each kind through, then
suppresses repeats of that kind for ``interval`` seconds and, on the next one
after that, says how many it held back. What the service itself is doing is
logged by the service, once per change of state (``partition_stalled`` /
``partition_resumed``); the attempts are counted in
``invoice_sm_broker_retries_total``.

A "kind" is the logger name plus the message template with digits removed,
so "Unable connect to node with id 1: [Errno 111] ... 41523" is one kind
whatever the node, port or errno.

``TransientStartupErrors`` demotes to DEBUG what aiokafka reports as an
error while a broker (or a topic just created) is still electing its group
coordinator and partition leaders: "Group Coordinator Request failed:
GroupCoordinatorNotAvailableError" and "Got error produce response ...
NotLeaderForPartitionError, retrying". aiokafka retries these itself and they
pass in a second or two; in red on the first screen they read as a failure.
Only in the first ``grace`` seconds after logging is configured (the start):
a line that goes on past that, or comes later (a broker outage), is a real
problem and is let through at its own level (``RepeatedClientErrors`` then
holds back its repeats).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

__all__ = ["RepeatedClientErrors", "TransientStartupErrors"]

_DIGITS = re.compile(r"\d+")
#: Kinds remembered at most (a bound, should a library log ever-new texts).
_MAX_KINDS = 512


class RepeatedClientErrors(logging.Filter):
    """Pass the first WARNING+ line of each kind from ``prefix`` loggers per interval."""

    def __init__(self, prefix: str = "aiokafka", interval: float = 30.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval = interval
        self.suppressed_total = 0
        self._kinds: dict[str, list[float | int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefix):
            return True
        template = record.msg if isinstance(record.msg, str) else str(record.msg)
        kind = f"{record.name}:{_DIGITS.sub('#', template)[:200]}"
        now = time.monotonic()
        seen = self._kinds.get(kind)
        if seen is None or now - seen[0] >= self.interval:
            held = int(seen[1]) if seen is not None else 0
            if held:
                record.msg = f"{record.getMessage()} ({held} similar lines held back in the last {self.interval:g} s)"
                record.args = ()
            if seen is None and len(self._kinds) >= _MAX_KINDS:
                self._kinds.clear()
            self._kinds[kind] = [now, 0]
            return True
        seen[1] = int(seen[1]) + 1
        self.suppressed_total += 1
        return False


#: aiokafka's lines for conditions a starting cluster is in for a moment:
#: (logger name prefix, words in the message). Retried by aiokafka itself.
TRANSIENT_STARTUP = (
    ("aiokafka.consumer.group_coordinator", "Group Coordinator Request failed"),
    ("aiokafka.consumer.group_coordinator", "Marking the coordinator dead"),
    ("aiokafka.producer.sender", "NotLeaderForPartitionError"),
    ("aiokafka.producer.sender", "LeaderNotAvailableError"),
    ("aiokafka", "CoordinatorLoadInProgressError"),
)


class TransientStartupErrors(logging.Filter):
    """Demote the known transient startup lines to DEBUG for ``grace`` seconds after creation.

    A demoted line is passed on only when the root logger logs DEBUG (the
    filter sits on the handler, after the logger's own level check).
    """

    def __init__(
        self,
        grace: float = 30.0,
        known: tuple[tuple[str, str], ...] = TRANSIENT_STARTUP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.grace = grace
        self.known = known
        self.demoted_total = 0
        self._clock = clock
        self._started = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith("aiokafka"):
            return True
        if self._clock() - self._started >= self.grace:
            return True
        message = record.getMessage()
        if not any(record.name.startswith(prefix) and words in message for prefix, words in self.known):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        self.demoted_total += 1
        return logging.getLogger().isEnabledFor(logging.DEBUG)
