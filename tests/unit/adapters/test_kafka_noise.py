"""adapters.kafka_noise: aiokafka's transient startup lines demoted, the rest untouched."""

from __future__ import annotations

import io
import json
import logging

import pytest

from adapters.kafka_noise import TransientStartupErrors
from adapters.logging import configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


COORDINATOR = (
    "aiokafka.consumer.group_coordinator",
    logging.ERROR,
    "Group Coordinator Request failed: %s",
    "[Error 15] GroupCoordinatorNotAvailableError",
)
NOT_LEADER = (
    "aiokafka.producer.sender",
    logging.WARNING,
    "Got error produce response on topic-partition %s, retrying. Error: %s",
    "tp",
    "<class 'aiokafka.errors.NotLeaderForPartitionError'>",
)


@pytest.mark.parametrize("line", [COORDINATOR, NOT_LEADER])
def test_known_startup_lines_are_demoted_to_debug_during_the_grace_period(line: tuple) -> None:
    clock = Clock()
    f = TransientStartupErrors(grace=30, clock=clock)
    record = _record(*line)
    assert f.filter(record) is logging.getLogger().isEnabledFor(logging.DEBUG)
    assert record.levelno == logging.DEBUG and record.levelname == "DEBUG"
    assert f.demoted_total == 1


def test_after_the_grace_period_the_same_line_keeps_its_level() -> None:
    clock = Clock()
    f = TransientStartupErrors(grace=30, clock=clock)
    clock.now += 31
    record = _record(*COORDINATOR)
    assert f.filter(record) is True
    assert record.levelno == logging.ERROR
    assert f.demoted_total == 0


@pytest.mark.parametrize(
    "line",
    [
        ("aiokafka.consumer.group_coordinator", logging.ERROR, "Heartbeat failed: %r", "boom"),
        ("invoice_sm.processor", logging.ERROR, "Group Coordinator Request failed: %s", "not aiokafka's"),
        ("aiokafka.conn", logging.ERROR, "Unable connect to node with id 1: %s", "refused"),
    ],
)
def test_other_lines_pass_untouched(line: tuple) -> None:
    f = TransientStartupErrors(grace=30, clock=Clock())
    record = _record(*line)
    assert f.filter(record) is True
    assert record.levelno == line[1]


@pytest.mark.usefixtures("restore_logging")
def test_configured_logging_keeps_the_startup_line_off_the_screen_and_real_errors_on_it() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    logging.getLogger("aiokafka.consumer.group_coordinator").error(
        "Group Coordinator Request failed: %s", "[Error 15] GroupCoordinatorNotAvailableError"
    )
    logging.getLogger("aiokafka.consumer.group_coordinator").error("Heartbeat failed: %r", "boom")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["Heartbeat failed: 'boom'"]
