"""Which instance holds an invoice's state, and how to ask it.

Kafka Streams answers an *interactive query* the same way: each instance
advertises its HTTP endpoint in the consumer group (``application.server``
in the subscription's user data), a query goes to the owner of the key's
partition, the owner answers from its local store, and a non-owner forwards
once. Here:

- **Advertising.** The processor's group consumer joins with
  ``AdvertisingAssignor``: aiokafka's round-robin assignor whose subscription
  user data carries this instance's service URL (``advertised_url``). The
  assignor keeps the name ``roundrobin`` and assigns exactly as before, so
  instances with and without it can share a group during an upgrade. The
  client id is left alone: it is what broker quotas and ACL logs key on.
- **Finding the owner.** ``partition_owners`` describes the processor group
  (one admin request to the group coordinator) and reads each member's
  assignment and advertised URL. A group that is rebalancing has no owners
  yet: the caller falls back to the topics.
- **The key's partition.** The processor keeps state in the partition the
  event arrived on, so the partition is whatever the publisher's
  partitioner chose. ``candidate_partitions`` lists murmur2 (Java clients,
  aiokafka, ``invoice-sm publish``, librdkafka's ``murmur2_random``) first,
  then CRC32 (librdkafka's default ``consistent_random``). A publisher with
  a partitioner of its own puts keys where only a full scan would find them.
- **Forwarding.** ``OwnerClient.ask`` sends one ``GET`` with the
  ``FORWARDED_HEADER``; an instance that receives it answers from its own
  stores or says it is not the owner, and never forwards again, so a stale
  group description cannot make requests loop.
"""

from __future__ import annotations

import json
import socket
import zlib
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.partitioner import murmur2

from adapters.kafka import broker_errors, client_options
from adapters.settings import Settings

__all__ = [
    "FORWARDED_HEADER",
    "AdvertisingAssignor",
    "OwnerAnswer",
    "OwnerClient",
    "advertised_url",
    "candidate_partitions",
    "decode_user_data",
    "encode_user_data",
    "new_admin",
    "partition_owners",
]

#: Set on a forwarded query (its value: the forwarding instance's URL). The
#: receiver answers from its own stores only.
FORWARDED_HEADER = "X-Invoice-Sm-Forwarded"
_USER_DATA_FIELD = "invoice_sm_url"
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def advertised_url(settings: Settings) -> str | None:
    """Where other instances reach this one's service port, or ``None``.

    ``INVOICE_SM_ADVERTISED_URL`` when set; else ``http://METRICS_HOST:METRICS_PORT``
    (the host name for a wildcard bind, which only helps when that name
    resolves for the others: set the URL explicitly behind NAT or in
    containers). No fixed port (unset or ``0``) means nothing to advertise.
    """
    if settings.advertised_url:
        return settings.advertised_url
    if not settings.metrics_port:
        return None
    host = settings.metrics_host
    if host in _WILDCARD_HOSTS:
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.metrics_port}"


def encode_user_data(url: str) -> bytes:
    return json.dumps({_USER_DATA_FIELD: url}, separators=(",", ":")).encode()


def decode_user_data(data: bytes | None) -> str | None:
    """The URL a member advertised; ``None`` for members that advertise nothing
    (an older instance, another client) or something unreadable."""
    if not data:
        return None
    try:
        url = json.loads(data).get(_USER_DATA_FIELD)
    except (ValueError, AttributeError):
        return None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


class AdvertisingAssignor(RoundRobinPartitionAssignor):  # type: ignore[misc]  # aiokafka ships no types
    """Round robin, plus this instance's URL in its subscription's user data.

    aiokafka calls ``metadata`` on the objects in ``partition_assignment_strategy``,
    so an instance (not the class) carries the URL.
    """

    def __init__(self, url: str) -> None:
        self._user_data = encode_user_data(url)

    def metadata(self, topics: Any) -> ConsumerProtocolMemberMetadata:  # per instance, not per class
        return ConsumerProtocolMemberMetadata(self.version, list(topics), self._user_data)


def candidate_partitions(key: str, partitions: int) -> list[int]:
    """Partitions an invoice key may live in, most likely first (module docstring)."""
    if partitions <= 0:
        return []
    raw = key.encode()
    out = [(murmur2(raw) & 0x7FFFFFFF) % partitions]
    crc = zlib.crc32(raw) % partitions
    if crc not in out:
        out.append(crc)
    return out


async def partition_owners(settings: Settings, admin: AIOKafkaAdminClient) -> dict[int, str]:
    """``invoice.events`` partition -> service URL of the processor holding it.

    Empty while the group is not ``Stable`` (mid-rebalance, assignments are
    about to change) or has no members; members that advertise no URL are
    left out. Raises ``BrokerError``.
    """
    group = settings.processor_group_id
    with broker_errors("describe the processor group"):
        responses = await admin.describe_consumer_groups([group])
    owners: dict[int, str] = {}
    for response in responses:
        for described in response.groups:
            error_code, name, state, _protocol_type, _protocol, members = described[:6]
            if name != group or error_code or state != "Stable":
                continue
            for member in members:
                metadata_bytes, assignment_bytes = member[3], member[4]
                try:
                    url = decode_user_data(ConsumerProtocolMemberMetadata.decode(metadata_bytes).user_data)
                    assignment = ConsumerProtocolMemberAssignment.decode(assignment_bytes)
                except Exception:  # noqa: BLE001, S112  # a member of another protocol: not ours to read
                    continue
                if url is None:
                    continue
                for topic, numbers in assignment.assignment:
                    if topic == settings.topic_events:
                        owners.update(dict.fromkeys(numbers, url))
    return owners


@dataclass(frozen=True)
class OwnerAnswer:
    """What an owner said: ``status`` 200 (the answer), 404 (it holds the
    partition and not the key), anything else (it could not answer)."""

    status: int
    body: dict[str, Any]


class OwnerClient:
    """Forwards queries to owners over HTTP: one hop, short timeouts.

    Any failure to get an answer (refused, reset, timed out, not JSON) is an
    ``OwnerAnswer`` with status 0: the caller falls back, it does not fail.
    """

    def __init__(self, *, origin: str | None, timeout_s: float = 15.0) -> None:
        self._origin = origin or "cli"
        # Connecting is quick or hopeless; the answer itself may take a topic scan.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=1.0))

    async def ask(self, url: str, card_id: str, code: str, *, events: int) -> OwnerAnswer:
        try:
            response = await self._client.get(
                f"{url}/invoices/{card_id}/{code}", params={"events": events}, headers={FORWARDED_HEADER: self._origin}
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return OwnerAnswer(0, {"error": f"{type(exc).__name__}: {exc}"})
        return OwnerAnswer(response.status_code, body if isinstance(body, dict) else {})

    async def close(self) -> None:
        await self._client.aclose()


def new_admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings))
