"""What the commands show a person, rendered to text (``consumers.render``): no broker, no terminal."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from adapters import wire
from adapters.settings import load_settings
from adapters.topics import Difference, topic_table
from consumers import render
from consumers.dlq import DlqEntry, Reinjection, to_dlq_record

CLOSURE, LOCK, INIT = "INVOICE_REIMBURSE_CLOSURE", "INVOICE_REIMBURSE_LOCK", "INVOICE_REIMBURSE_INIT"


def rendered(draw: Any) -> str:
    """What ``draw(console)`` prints on a 160-column console that is not a terminal (no colours)."""
    out = io.StringIO()
    draw(Console(file=out, width=160))
    return out.getvalue()


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def cells(text: str, rule: str = "│") -> list[list[str]]:
    """The rows of a boxed table, each as its stripped cells."""
    return [[cell.strip() for cell in line.split(rule)[1:-1]] for line in text.splitlines() if line.startswith(rule)]


# ------------------------------------------------------------------ status


def event(n: int, decision: str, from_status: str, requested: str, to: str | None, reason: str | None) -> dict[str, Any]:
    return {
        "decision": decision,
        "event_id": f"e{n}",
        "event_type": "invoice.status.set",
        "from_status": from_status,
        "requested_status": requested,
        "to_status": to,
        "version": n,
        "reason": reason,
        "origin": "upstream",
        "legal": True,
        "event_time": None,
        "processed_at": f"2026-12-02T10:00:0{n}.000Z",
        "offset": n,
    }


def found(**changes: Any) -> dict[str, Any]:
    body = {
        "key": "card1/1",
        "found": True,
        "status": CLOSURE,
        "version": 2,
        "appid": "wx1234567890abcdef",
        "updated_at": "2026-12-02T10:00:02.000Z",
        "partition": 3,
        "source": "forwarded",
        "answered_by": "http://10.0.0.2:9100",
        "events": [event(1, "accepted", INIT, LOCK, LOCK, None), event(2, "rejected", CLOSURE, INIT, None, "terminal_state")],
        "last_delivery": {
            "result": "delivered",
            "errcode": 0,
            "errmsg": "ok",
            "version": 1,
            "reimburse_status": LOCK,
            "idempotency_key": "card1/1#1",
            "attempts": 2,
            "completed_at": "2026-12-02T10:00:01.000Z",
            "repair": False,
            "reason": None,
        },
        "delivery_pending": True,
        "history_complete": True,
        "notes": [],
    }
    return body | changes


def test_a_found_invoice_shows_its_fields_its_last_delivery_and_that_a_newer_one_is_pending() -> None:
    text = rendered(lambda c: render.print_invoice_answers([(200, found())], c))
    assert text.splitlines()[0].rstrip() == "card1/1"
    assert cells(text) == [
        ["status", "INVOICE_REIMBURSE_CLOSURE  (version 2)"],
        ["appid", "wx1234567890abcdef"],
        ["updated", "2026-12-02T10:00:02.000Z"],
        ["from", "forwarded http://10.0.0.2:9100, partition 3"],
        ["last delivery", "v1 INVOICE_REIMBURSE_LOCK: delivered (errcode 0, 2 attempts, 2026-12-02T10:00:01.000Z)"],
        ["", "a newer accepted status is on its way to WeChat"],
    ]
    assert "history cut" not in text


def test_the_events_table_lists_each_decision_oldest_first_with_the_move_it_asked_for() -> None:
    text = lines(rendered(lambda c: render.print_invoice_answers([(200, found())], c)))
    header = next(i for i, line in enumerate(text) if line.split()[:2] == ["processed", "event"])
    assert text[header].split() == ["processed", "event", "type", "decision", "from", "->", "to", "v", "reason"]
    first, second = (line.split() for line in text[header + 1 : header + 3])
    assert first == ["2026-12-02T10:00:01.000Z", "e1", "invoice.status.set", "accepted", INIT, "->", LOCK, "1"]
    # Not accepted: the move shown is the one asked for.
    assert second == [
        "2026-12-02T10:00:02.000Z",
        "e2",
        "invoice.status.set",
        "rejected",
        CLOSURE,
        "->",
        INIT,
        "2",
        "terminal_state",
    ]


def test_an_invoice_without_deliveries_or_owner_says_so_and_a_cut_history_and_notes_follow_the_events() -> None:
    body = found(
        appid="",
        updated_at=None,
        source="topic",
        answered_by=None,
        last_delivery=None,
        delivery_pending=False,
        history_complete=False,
        notes=["no owner known (group rebalancing, or no instance advertises a URL): read the topics"],
    )
    text = rendered(lambda c: render.print_invoice_answers([(200, body)], c))
    assert cells(text)[1:] == [["appid", "-"], ["updated", "-"], ["from", "topic, partition 3"], ["last delivery", "none found"]]
    assert lines(text)[-2:] == [
        "  history cut: older records were not read",
        "  no owner known (group rebalancing, or no instance advertises a URL): read the topics",
    ]


def test_text_from_the_answer_is_shown_as_written_never_read_as_markup() -> None:
    body = found(
        key="c[bold]/1",
        appid="wx[red]1",
        events=[event(1, "accepted", INIT, LOCK, LOCK, None) | {"event_id": "e[/]1"}],
        notes=["note [dim]kept"],
    )
    text = rendered(lambda c: render.print_invoice_answers([(200, body), (503, {"key": "x/1", "error": "a [/b] c"})], c))
    for shown in ("c[bold]/1", "wx[red]1", "e[/]1", "note [dim]kept", "x/1: error 503: a [/b] c"):
        assert shown in text


def test_an_unanswered_key_is_one_line_and_its_notes() -> None:
    answers: list[tuple[int, dict[str, Any]]] = [
        (404, {"key": "nosuch/1", "found": False, "notes": ["owner http://p:1 of partition 2 could not answer (421)"]}),
        (503, {"key": "x/1", "error": "topics missing: invoice.state"}),
        (400, {"error": "not an invoice key"}),
    ]
    assert lines(rendered(lambda c: render.print_invoice_answers(answers, c))) == [
        "nosuch/1: not found",
        "  owner http://p:1 of partition 2 could not answer (421)",
        "x/1: error 503: topics missing: invoice.state",
        "?: error 400: not an invoice key",
    ]


def test_piped_status_output_is_wide_enough_not_to_wrap_a_long_row(capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://" + "a" * 100 + ":9100"
    render.print_invoice_answers([(200, found(answered_by=url))])
    assert any(f"forwarded {url}, partition 3" in line for line in capsys.readouterr().out.splitlines())


def test_no_service_at_the_url_is_said_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    render.print_no_service("http://127.0.0.1:9100", "ConnectError")
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "invoice-sm status: no service answers at http://127.0.0.1:9100 (ConnectError); reading the topics directly\n"


# ------------------------------------------------------------------ topics


def test_the_topic_table_has_a_row_per_topic_with_its_retention_in_words() -> None:
    settings = load_settings(
        kafka_bootstrap_servers="127.0.0.1:1", topic_outcomes_retention_ms=3_600_000, topic_dlq_retention_ms=86_400_000
    )
    text = rendered(lambda c: render.print_topic_table(topic_table(settings), c))
    rows = {row[0]: row for row in cells(text) if row[0]}  # a wrapped cell continues on a row with no topic
    assert cells(text, "┃") == [["topic", "role", "key", "cleanup", "retention", "partitions", "replication", "min ISR"]]
    assert rows["invoice.events"][3:5] == ["delete", "never"]
    assert rows["invoice.state"][3:5] == ["compact", "compacted"]
    assert rows["invoice.outcomes"][4] == "3600000 ms"
    assert rows["invoice.events.dlq"][4] == "1 d"
    assert set(rows) == {s.name for s in topic_table(settings)}


def test_a_topic_check_shows_the_differences_or_says_there_are_none(capsys: pytest.CaptureFixture[str]) -> None:
    differences = [Difference("invoice.state", "cleanup.policy", "compact", "delete")]
    text = rendered(lambda c: render.print_topic_check(6, differences, c))
    assert text.splitlines()[0].strip() == "topics differing from the table"
    assert cells(text, "┃") == [["topic", "setting", "table", "cluster"]]
    assert cells(text) == [["invoice.state", "cleanup.policy", "compact", "delete"]]
    render.print_topic_check(6, [])
    assert capsys.readouterr().out == "6 topics as the table says\n"


def test_created_topics_are_listed_with_their_partitions(capsys: pytest.CaptureFixture[str]) -> None:
    render.print_partition_counts({"invoice.events": 6, "invoice.state": 3})
    assert capsys.readouterr().out == "invoice.events: 6 partitions\ninvoice.state: 3 partitions\n"


# ------------------------------------------------------------------ dlq reinject


def reinjection(status: str, *, detail: str = "", sent_to: tuple[int, int] | None = None) -> Reinjection:
    record = SimpleNamespace(
        topic="invoice.events.dlq",
        partition=1,
        offset=7,
        timestamp=0,
        key=b"k/1",
        value=b"{}",
        headers=[(wire.DLQ_HEADERS["reason"], b"unknown_type")],
    )
    return Reinjection(DlqEntry(record, to_dlq_record(record)), b"k/1", b"{}", [], status=status, detail=detail, sent_to=sent_to)


@pytest.mark.parametrize(
    ("item", "out", "err"),
    [
        (reinjection("sent", sent_to=(4, 12)), "dlq 1:7 -> invoice.events 4:12\n", ""),
        (reinjection("would_send"), "dlq 1:7 would be sent (key b'k/1')\n", ""),
        (
            reinjection("refused", detail="would go to the DLQ again: unknown_type: x"),
            "",
            "warning: dlq 1:7 (unknown_type) refused: would go to the DLQ again: unknown_type: x\n",
        ),
        (
            reinjection("skipped_already_reinjected", detail="already re-injected as invoice.events 0:3"),
            "",
            "warning: dlq 1:7 (unknown_type) skipped_already_reinjected: already re-injected as invoice.events 0:3\n",
        ),
    ],
    ids=lambda v: v.status if isinstance(v, Reinjection) else "",
)
def test_each_reinjection_says_where_it_went_or_warns_why_not(
    item: Reinjection, out: str, err: str, capsys: pytest.CaptureFixture[str]
) -> None:
    render.print_reinjection(item, "invoice.events")
    assert capsys.readouterr() == (out, err)


def test_with_json_lines_a_reinjection_prints_only_its_warning(capsys: pytest.CaptureFixture[str]) -> None:
    render.print_reinjection(reinjection("sent", sent_to=(4, 12)), "invoice.events", line=False)
    render.print_reinjection(reinjection("refused", detail="no"), "invoice.events", line=False)
    assert capsys.readouterr() == ("", "warning: dlq 1:7 (unknown_type) refused: no\n")


def test_chosen_positions_without_a_dlq_record_are_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    render.print_missing_dlq_records([(0, 5), (2, 9)])
    assert capsys.readouterr() == ("", "warning: no DLQ record at 0:5\nwarning: no DLQ record at 2:9\n")
