"""``WeChatSimulator.in_flight``: the calls in progress, as crash tests count them at a kill."""

from __future__ import annotations

import msgspec

from devtools.simulator import WeChatSimulator


def body(card_id: str) -> bytes:
    return msgspec.json.encode({"card_id": card_id, "code": "c", "reimburse_status": "INVOICE_REIMBURSE_LOCK"})


def test_in_flight_lists_each_call_between_its_arrival_and_its_end() -> None:
    sim = WeChatSimulator()
    assert sim.in_flight() == []
    a = sim.call_arrived(body("A"), "A/c#1")
    b = sim.call_arrived(body("B"), "B/c#1")
    again = sim.call_arrived(body("A"), "A/c#1")  # a repeat while the first is in progress: counted twice
    assert sorted(sim.in_flight()) == ["A/c#1", "A/c#1", "B/c#1"]
    sim.call_ended(a, "A/c#1")
    sim.call_ended(b, "B/c#1")
    assert sim.in_flight() == ["A/c#1"]
    sim.call_ended(again, "A/c#1")
    assert sim.in_flight() == []
