"""``dlq list`` / ``dlq reinject`` against a real broker and the live processor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from adapters import wire
from adapters.settings import Settings
from consumers.dlq import REINJECTED_HEADER
from domain.status import ReimburseStatus as S
from tests.factories import card, encode, event
from tests.support.kafka_io import produce, read_topic, values, wait_for_count
from tests.support.services import run_cli, running

pytestmark = pytest.mark.broker


def dlq_lines(stdout: str) -> list[wire.DlqRecord]:
    return [msgspec.json.decode(line, type=wire.DlqRecord) for line in stdout.splitlines() if line.strip()]


async def test_a_corrected_event_is_reinjected_once_and_decided(settings: Settings, tmp_path: Path) -> None:
    good_card, good_code = card(1)
    bad_card, bad_code = card(2)
    contradicting = event(bad_card, bad_code, S.LOCK, event_id="bad-1")
    contradicting["data"]["reimburse_status"] = S.CLOSURE.value  # type says LOCK: invalid_data
    unknown = event(*card(3), S.LOCK, event_id="bad-2")
    unknown["type"] = "invoice.reimbursement.exploded"
    await produce(
        settings,
        [
            (*encode(event(good_card, good_code, S.LOCK, event_id="ok-1")), []),
            (*encode(contradicting), [("trace-id", b"abc")]),
            (*encode(unknown), []),
        ],
    )
    async with running(settings):
        await wait_for_count(settings, settings.topic_outcomes, 1)
        await wait_for_count(settings, settings.topic_dlq, 2)

        listed = await run_cli(settings, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        records = {r.reason: r for r in dlq_lines(listed.stdout)}
        assert set(records) == {"invalid_data", "unknown_type"}
        bad = records["invalid_data"]
        assert bad.key == f"{bad_card}/{bad_code}" and bad.value is not None and json.loads(bad.value)["id"] == "bad-1"
        assert bad.headers == {"trace-id": "abc"} and bad.source_topic == settings.topic_events
        assert "contradicts" in bad.error_message and bad.partition is not None and bad.offset is not None
        table = await run_cli(settings, "dlq", "list", "--reason", "unknown_type")
        assert table.returncode == 0 and "unknown_type" in table.stdout and "invalid_data" not in table.stdout

        fixed = event(bad_card, bad_code, S.LOCK, event_id="bad-1")
        corrected = tmp_path / "fixed.jsonl"
        corrected.write_text(json.dumps(fixed) + "\n")
        where = f"{bad.partition}:{bad.offset}"
        sent = await run_cli(settings, "dlq", "reinject", "--offsets", where, "--from-file", str(corrected))
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout.splitlines()[-1])["sent"] == 1

        outcomes = values(await wait_for_count(settings, settings.topic_outcomes, 2))
        decided = [o for o in outcomes if o["data"]["card_id"] == bad_card]
        assert [(o["type"], o["data"]["event_id"], o["data"]["to_status"]) for o in decided] == [
            ("invoice.status.accepted", "bad-1", S.LOCK.value)
        ]
        # The re-injected record names its DLQ position; the original headers are gone with the bad value.
        events = await read_topic(settings, settings.topic_events)
        marked = [
            r
            for r in events
            if (REINJECTED_HEADER, f"{settings.topic_dlq}/{where.replace(':', '/')}".encode()) in (r.headers or ())
        ]
        assert len(marked) == 1 and marked[0].key == f"{bad_card}/{bad_code}".encode()

        # Again: visibly skipped, nothing sent.
        again = await run_cli(settings, "dlq", "reinject", "--offsets", where, "--from-file", str(corrected))
        assert again.returncode == 0
        assert "already re-injected" in again.stderr
        summary = json.loads(again.stdout.splitlines()[-1])
        assert (summary["skipped_already_reinjected"], summary["sent"]) == (1, 0)
        forced = await run_cli(
            settings, "dlq", "reinject", "--offsets", where, "--from-file", str(corrected), "--force", "--dry-run"
        )
        assert json.loads(forced.stdout.splitlines()[-1])["would_send"] == 1
        assert len(await read_topic(settings, settings.topic_events)) == len(events)

        # An original that would fail again is refused, not sent.
        refused = await run_cli(settings, "dlq", "reinject", "--reason", "unknown_type")
        assert refused.returncode == 1 and "would go to the DLQ again: unknown_type" in refused.stderr
        assert len(await read_topic(settings, settings.topic_events)) == len(events)


async def test_originals_are_reinjected_with_their_headers_once_the_cause_is_fixed(
    make_settings: Callable[..., Settings],
) -> None:
    strict = make_settings(max_event_bytes=512)
    c, code = card(7)
    big = event(c, code, S.LOCK, event_id="big-1")
    big["comment"] = "x" * 600  # an extension attribute: valid, but over the strict limit
    await produce(strict, [(*encode(big), [("content-type", b"application/cloudevents+json"), ("trace-id", b"t-7")])])
    async with running(strict):
        dlq = await wait_for_count(strict, strict.topic_dlq, 1)
    assert dict(dlq[0].headers)[wire.DLQ_HEADERS["reason"]] == b"oversized"

    # Still refused under the strict limit; sent once the limit is raised.
    refused = await run_cli(strict, "dlq", "reinject", "--all")
    assert refused.returncode == 1 and "oversized" in refused.stderr
    relaxed = strict.model_copy(update={"max_event_bytes": 65536})
    dry = await run_cli(relaxed, "dlq", "reinject", "--all", "--dry-run")
    assert json.loads(dry.stdout.splitlines()[-1])["would_send"] == 1
    assert len(await read_topic(relaxed, relaxed.topic_events)) == 1
    sent = await run_cli(relaxed, "dlq", "reinject", "--all")
    assert sent.returncode == 0, sent.stderr

    events = await read_topic(relaxed, relaxed.topic_events)
    assert len(events) == 2
    again = max(events, key=lambda r: r.offset)  # one invoice: one partition
    assert again.value == dlq[0].value and again.key == dlq[0].key
    headers = list(again.headers)
    assert ("trace-id", b"t-7") in headers and ("content-type", b"application/cloudevents+json") in headers
    assert not [h for h, _ in headers if h.startswith("dlq.") and h != REINJECTED_HEADER]
    async with running(relaxed):
        outcome = values(await wait_for_count(relaxed, relaxed.topic_outcomes, 1))[0]
    assert outcome["type"] == "invoice.status.accepted" and outcome["data"]["event_id"] == "big-1"
    assert outcome["data"]["source_offset"] == again.offset

    second = await run_cli(relaxed, "dlq", "reinject", "--all")
    assert json.loads(second.stdout.splitlines()[-1])["skipped_already_reinjected"] == 1
