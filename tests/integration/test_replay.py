"""``replay`` against a real broker: the rebuilt state is the live processor's."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters import wire
from adapters.settings import Settings
from consumers.replay import replay, same_state, scan
from domain.status import ReimburseStatus as S
from tests.factories import card, encode, event, random_stream
from tests.malformed import malformed_cases, producible
from tests.support.kafka_io import produce, read_topic, values, wait_for_count
from tests.support.services import live_states, run_cli, running

pytestmark = pytest.mark.broker


def mixed_records(n_events: int, n_invoices: int, seed: int, max_bytes: int) -> tuple[list, int]:
    """Random events with every kind of malformed record spread among them;
    returns the records and how many are valid."""
    events = list(random_stream(n_events, n_invoices, seed=seed))
    bad = producible(malformed_cases(max_bytes))
    records: list = []
    step = max(1, len(events) // (len(bad) + 1))
    for i, ev in enumerate(events):
        records.append((*encode(ev), []))
        if i % step == 0 and i // step < len(bad):
            _, key, value, headers, _ = bad[i // step]
            records.append((key, value, headers))
    return records, len(events)


async def test_replay_rebuilds_exactly_the_state_the_live_processor_wrote(settings: Settings) -> None:
    records, valid = mixed_records(4000, 250, seed=11, max_bytes=settings.max_event_bytes)
    await produce(settings, records)
    async with running(settings):
        outcomes = await wait_for_count(settings, settings.topic_outcomes, valid, timeout=120)
        dlq = await wait_for_count(settings, settings.topic_dlq, len(records) - valid)
    live = await live_states(settings)

    with await replay(settings, in_memory=True, progress=False) as result:
        rebuilt = result.states
        assert result.records == len(records)
        assert sorted(rebuilt) == sorted(live)
        differing = [k for k in live if not same_state(live[k], rebuilt[k])]
        assert differing == []
        # Decision by decision, the same verdicts as the processor's outcomes...
        live_kinds = Counter(o["type"].rsplit(".", 1)[1] for o in values(outcomes))
        assert {k: n for k, n in result.by_kind.items() if n} == dict(live_kinds)
        assert live_kinds["duplicate"] > 0 and live_kinds["rejected"] > 0  # the stream exercises them
        # ...and the same DLQ reasons.
        live_reasons = Counter(dict(r.headers)[wire.DLQ_HEADERS["reason"]].decode() for r in dlq)
        assert result.invalid == dict(live_reasons)
        assert result.from_beginning and result.truncated_partitions == []
        # Each invoice is rebuilt from the partition its state lives in.
        state_partitions = {r.key.decode(): r.partition for r in await read_topic(settings, settings.topic_state)}
        assert result.partition_of == state_partitions


async def test_replay_on_disk_matches_replay_in_memory(settings: Settings, tmp_path: Path) -> None:
    await produce(settings, ((*encode(ev), []) for ev in random_stream(1500, 120, seed=5)))
    with await replay(settings, in_memory=True, progress=False) as memory:
        expected = memory.states
    with await replay(settings, state_dir=tmp_path / "rebuilt", progress=False) as disk:
        assert not disk.store.in_memory and (tmp_path / "rebuilt" / "replay").is_dir()
        got = disk.states
        assert disk.by_kind == memory.by_kind
    assert sorted(got) == sorted(expected)
    assert all(same_state(got[k], expected[k]) for k in expected)


async def test_default_store_is_a_temporary_directory_removed_on_close(settings: Settings) -> None:
    await produce(settings, ((*encode(ev), []) for ev in random_stream(200, 20, seed=3)))
    result = await replay(settings, progress=False)
    directory = result.store.directory
    assert directory is not None and directory.is_dir()
    assert len(result.states) == 20
    result.close()
    assert not directory.exists()


async def test_replay_from_offsets_starts_each_named_partition_there(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(topic_partitions=1)
    c, code = card(1)
    await produce(
        settings, [(*encode(event(c, code, s, event_id=f"e{i}")), []) for i, s in enumerate([S.LOCK, S.INIT, S.LOCK, S.CLOSURE])]
    )
    with await replay(settings, in_memory=True, progress=False) as whole:
        assert whole.states[f"{c}/{code}"].version == 4
    with await replay(settings, in_memory=True, progress=False, from_offsets={0: 2}) as tail:
        state = tail.states[f"{c}/{code}"]
        # Judged from INIT without the first two events: LOCK accepted, CLOSURE accepted.
        assert (state.status, state.version, state.recent_event_ids) == (S.CLOSURE, 2, ("e2", "e3"))
        assert tail.records == 2 and not tail.from_beginning


async def test_scan_reads_what_replay_reads(settings: Settings) -> None:
    await produce(settings, ((*encode(ev), []) for ev in random_stream(600, 50, seed=9)))
    raw = await scan(settings)
    with await replay(settings, in_memory=True, progress=False) as result:
        assert raw.records == result.records == 600
        assert raw.ranges == result.ranges


async def test_replay_writes_no_topic_unless_asked_and_then_only_that_one(settings: Settings, tmp_path: Path) -> None:
    await produce(settings, ((*encode(ev), []) for ev in random_stream(500, 40, seed=4)))
    before = {
        t: len(await read_topic(settings, t))
        for t in (settings.topic_events, settings.topic_outcomes, settings.topic_state, settings.topic_dlq)
    }
    target = settings.topic_state + ".rebuilt"
    summary_path = tmp_path / "replay.json"
    done = await run_cli(settings, "replay", "--write-state-topic", target, "--json", str(summary_path))
    assert done.returncode == 0, done.stderr
    after = {t: len(await read_topic(settings, t)) for t in before}
    assert after == before
    summary = json.loads(summary_path.read_text())
    assert summary["records"] == 500 and summary["invoices"] == 40 and summary["state_records_written"] == 40
    assert sum(summary["by_kind"].values()) == 500 and summary["rate_per_s"] > 0
    written = {r.key.decode(): wire.decode_state(r.value) for r in await read_topic(settings, target)}
    with await replay(settings, in_memory=True, progress=False) as result:
        assert all(same_state(written[k], s) for k, s in result.states.items()) and len(written) == 40
    # A live topic is refused without --force.
    refused = await run_cli(settings, "replay", "--in-memory", "--write-state-topic", settings.topic_state)
    assert refused.returncode == 2 and "live topic" in refused.stderr
