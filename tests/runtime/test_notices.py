"""Billing and event notices to DSPs, per seat in batches: flushed at a size
or after a delay, a verdict per item, and the retry schedule for a call the
DSP could not take. The sender runs on an event loop with grpc.aio stubs,
against a small BidderService on a real gRPC server."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from concurrent import futures

import grpc
import pytest
from google.rpc import code_pb2

from adchain.v1 import batch_pb2, bidder_pb2, bidder_pb2_grpc
from services.adserver.settings import AdServerConfig
from services.runtime.config import ConfigError, RetrySettings, from_mapping
from services.runtime.notices import NoticeSender
from services.verifier.settings import VerifierConfig
from tests.conftest import TOKENS


class Dsp(bidder_pb2_grpc.BidderServiceServicer):
    """Takes notice batches and remembers them. `down` calls answer
    UNAVAILABLE first; impression keys in `refuse` get a NOT_FOUND item;
    with `batches=False` it serves only the unary notices (UNIMPLEMENTED);
    every call takes `stall_s` to answer (`stalled` is set once one waits)."""

    def __init__(self, down: int = 0, refuse: frozenset[str] = frozenset(), batches: bool = True,
                 stall_s: float = 0.0):
        self.down = down
        self.refuse = refuse
        self.batches_served = batches
        self.stall_s = stall_s
        self.stalled = threading.Event()
        self.calls: list[tuple[str, list[str]]] = []  # (rpc, impression keys)
        self._lock = threading.Lock()

    def _take(self, rpc: str, items, context) -> list[batch_pb2.ItemStatus]:
        if self.stall_s:
            self.stalled.set()
            time.sleep(self.stall_s)
        with self._lock:
            if self.down > 0:
                self.down -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
            self.calls.append((rpc, [item.impression_key for item in items]))
        return [batch_pb2.ItemStatus(code=code_pb2.NOT_FOUND, field="campaign_id", message="no such campaign")
                if item.impression_key in self.refuse else batch_pb2.ItemStatus() for item in items]

    def NotifyBillings(self, request, context):
        if not self.batches_served:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        statuses = self._take("NotifyBillings", request.items, context)
        return bidder_pb2.NotifyBillingsResponse(results=[
            bidder_pb2.NotifyBillingResult(status=s, response=bidder_pb2.NotifyBillingResponse(counted=True))
            for s in statuses])

    def NotifyEvents(self, request, context):
        if not self.batches_served:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        statuses = self._take("NotifyEvents", request.items, context)
        return bidder_pb2.NotifyEventsResponse(results=[
            bidder_pb2.NotifyEventResult(status=s, response=bidder_pb2.NotifyEventResponse(counted=True))
            for s in statuses])

    def NotifyBilling(self, request, context):
        self._take("NotifyBilling", [request], context)
        return bidder_pb2.NotifyBillingResponse(counted=True)

    def keys(self, rpc: str | None = None) -> list[str]:
        with self._lock:
            return [key for called, keys in self.calls if rpc in (None, called) for key in keys]


class Outcomes:
    """What the sender recorded, by (kind, outcome)."""

    def __init__(self):
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.calls = 0

    def __call__(self, kind: str, outcome: str, n: int) -> None:
        self.counts[(kind, outcome)] += n
        self.calls += 1

    def __getitem__(self, key: tuple[str, str]) -> int:
        return self.counts[key]


@pytest.fixture
def serve():
    servers = []

    def start(dsp: Dsp) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        bidder_pb2_grpc.add_BidderServiceServicer_to_server(dsp, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 30))


async def eventually(predicate, timeout_s: float = 5.0) -> bool:
    """Whether `predicate` holds within `timeout_s`, letting the loop run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@contextlib.asynccontextmanager
async def sending(address: str, outcomes: Outcomes, **settings):
    """A sender to "dsp-1" at `address` on the running loop, closed (its
    last tries made) on the way out."""
    channel = grpc.aio.insecure_channel(address)
    sender = NoticeSender({"dsp-1": bidder_pb2_grpc.BidderServiceStub(channel)},
                          RetrySettings(**{"retry_interval_s": 0.05, "retry_for_s": 5.0, "timeout_ms": 1000,
                                           **settings}), outcomes)
    try:
        yield sender
    finally:
        await sender.close(1.0)
        await channel.close()


def billing(key: str) -> bidder_pb2.NotifyBillingRequest:
    return bidder_pb2.NotifyBillingRequest(impression_key=key, campaign_id="c",
                                           macros=bidder_pb2.AuctionMacros(price_micros=1_000_000))


def click(key: str) -> bidder_pb2.NotifyEventRequest:
    return bidder_pb2.NotifyEventRequest(kind=bidder_pb2.EVENT_KIND_CLICK, impression_key=key, campaign_id="c")


def test_a_batch_is_sent_as_soon_as_it_reaches_max_items(serve):
    dsp, outcomes = Dsp(), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, batch_max_items=3, batch_max_delay_ms=60_000) as sender:
            for key in ("a", "b", "c"):
                sender.submit("dsp-1", "billing", billing(key))
            assert await eventually(lambda: outcomes["billing", "sent"] == 3, timeout_s=2.0)  # long before the minute
            assert dsp.calls == [("NotifyBillings", ["a", "b", "c"])]
            sender.submit("dsp-1", "billing", billing("d"))
            assert not await eventually(lambda: outcomes["billing", "sent"] == 4, timeout_s=0.3)  # waits to fill
            assert sender.pending() == 1

    run(scenario())


def test_a_partial_batch_is_sent_after_max_delay(serve):
    dsp, outcomes = Dsp(), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, batch_max_items=100, batch_max_delay_ms=30) as sender:
            sender.submit_many([("dsp-1", "billing", billing("a")), ("dsp-1", "billing", billing("b"))])
            assert await eventually(lambda: outcomes["billing", "sent"] == 2)
            assert dsp.calls == [("NotifyBillings", ["a", "b"])]
            assert outcomes.calls == 1  # one record of (billing, sent) for the batch, not one per notice
            assert sender.pending() == 0

    run(scenario())


def test_billing_notices_go_to_notify_billings_and_events_to_notify_events(serve):
    dsp, outcomes = Dsp(), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, batch_max_delay_ms=10) as sender:
            sender.submit_many([("dsp-1", "billing", billing("a")), ("dsp-1", "click", click("a")),
                                ("dsp-1", "billing", billing("b"))])
            assert await eventually(lambda: sender.pending() == 0)
            assert sorted(dsp.calls) == [("NotifyBillings", ["a", "b"]), ("NotifyEvents", ["a"])]
            assert (outcomes["billing", "sent"], outcomes["click", "sent"]) == (2, 1)

    run(scenario())


def test_a_batch_the_dsp_could_not_take_is_retried_then_sent(serve):
    dsp, outcomes = Dsp(down=2), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, batch_max_delay_ms=5) as sender:
            sender.submit_many([("dsp-1", "billing", billing(key)) for key in ("a", "b", "c")])
            assert await eventually(lambda: outcomes["billing", "sent"] == 3)
            # Every notice of a failed call goes back on the schedule: twice each.
            assert outcomes["billing", "retried"] == 6
            assert outcomes["billing", "failed"] == 0
            assert dsp.keys() == ["a", "b", "c"]
            assert sender.pending() == 0

    run(scenario())


def test_a_refused_item_fails_while_the_rest_of_its_batch_is_sent(serve, caplog):
    dsp, outcomes = Dsp(refuse=frozenset({"b"})), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, batch_max_delay_ms=5) as sender:
            sender.submit_many([("dsp-1", "billing", billing(key)) for key in ("a", "b", "c")])
            assert await eventually(lambda: sender.pending() == 0)
            assert (outcomes["billing", "sent"], outcomes["billing", "failed"],
                    outcomes["billing", "retried"]) == (2, 1, 0)
            assert dsp.calls == [("NotifyBillings", ["a", "b", "c"])]  # never retried: retrying cannot help

    run(scenario())
    assert any("b" in r.getMessage() and "campaign_id" in r.getMessage() for r in caplog.records)


def test_notices_are_failed_when_their_retry_window_closes(serve):
    dsp, outcomes = Dsp(down=1_000), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, batch_max_delay_ms=5, retry_interval_s=0.05,
                           retry_for_s=0.2) as sender:
            sender.submit_many([("dsp-1", "billing", billing("a")), ("dsp-1", "billing", billing("b"))])
            assert await eventually(lambda: outcomes["billing", "failed"] == 2)
            # Retried while a next try fits in the window (at most 0.2 / 0.05 times), both notices alike.
            assert 2 <= outcomes["billing", "retried"] <= 8 and outcomes["billing", "retried"] % 2 == 0
            assert outcomes["billing", "sent"] == 0
            assert sender.pending() == 0

    run(scenario())


def test_close_gives_every_pending_notice_one_last_try(serve):
    dsp, outcomes = Dsp(down=1), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, retry_interval_s=60.0, retry_for_s=600.0,
                           batch_max_delay_ms=5) as sender:
            sender.submit("dsp-1", "billing", billing("a"))
            assert await eventually(lambda: outcomes["billing", "retried"] == 1)  # next try a minute away
            await sender.close(2.0)
            assert outcomes["billing", "sent"] == 1
            assert sender.pending() == 0

    run(scenario())


def test_close_counts_what_is_left_as_failed():
    outcomes = Outcomes()

    async def scenario():
        async with sending("127.0.0.1:1", outcomes, retry_interval_s=60.0, retry_for_s=600.0,  # nothing listens
                           batch_max_delay_ms=5, timeout_ms=200) as sender:
            sender.submit_many([("dsp-1", "billing", billing("a")), ("dsp-1", "click", click("a"))])
            assert await eventually(lambda: outcomes["billing", "retried"] == 1 and outcomes["click", "retried"] == 1)
            await sender.close(1.0)
            assert (outcomes["billing", "failed"], outcomes["click", "failed"]) == (1, 1)
            assert sender.pending() == 0

    run(scenario())


def test_close_fails_a_notice_whose_answer_has_not_come_once_and_for_good(serve):
    dsp, outcomes = Dsp(stall_s=1.0), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, batch_max_delay_ms=5, timeout_ms=5_000) as sender:
            sender.submit("dsp-1", "billing", billing("a"))
            assert await eventually(lambda: dsp.stalled.is_set())
            began = time.monotonic()
            await sender.close(0.1)
            assert time.monotonic() - began < 0.9  # close does not wait past its timeout
            assert sender.pending() == 0
        await asyncio.sleep(1.2)  # the DSP's late answer finds no call waiting for it

    run(scenario())
    assert (outcomes["billing", "failed"], outcomes["billing", "sent"], outcomes["billing", "retried"]) == (1, 0, 0)


def test_a_dsp_without_the_batch_rpcs_gets_one_call_per_notice(serve):
    dsp, outcomes = Dsp(batches=False), Outcomes()

    async def scenario():
        async with sending(serve(dsp), outcomes, batch_max_delay_ms=5) as sender:
            sender.submit_many([("dsp-1", "billing", billing("a")), ("dsp-1", "billing", billing("b"))])
            assert await eventually(lambda: outcomes["billing", "sent"] == 2)
            assert sorted(dsp.calls) == [("NotifyBilling", ["a"]), ("NotifyBilling", ["b"])]
            assert outcomes["billing", "failed"] == 0

    run(scenario())


def test_batch_limits_are_settings_validated_with_the_others():
    adserver = from_mapping(AdServerConfig, {"tokens": TOKENS, "billing": {"batch_max_items": 64}},
                            env={"ADCHAIN_BILLING_BATCH_MAX_DELAY_MS": "5"})
    assert (adserver.billing.batch_max_items, adserver.billing.batch_max_delay_ms) == (64, 5)
    verifier = from_mapping(VerifierConfig, {"tokens": TOKENS}, env={"ADCHAIN_NOTICES_BATCH_MAX_ITEMS": "32"})
    assert (verifier.notices.batch_max_items, verifier.notices.batch_max_delay_ms) == (32, 20)
    assert (RetrySettings().batch_max_items, RetrySettings().batch_max_delay_ms) == (256, 20)
    with pytest.raises(ConfigError) as raised:
        from_mapping(AdServerConfig, {"tokens": TOKENS, "billing": {"batch_max_items": 0, "batch_max_delay_ms": -1}},
                     env={})
    assert sorted(p.split(":")[0] for p in raised.value.problems) == ["billing.batch_max_delay_ms",
                                                                     "billing.batch_max_items"]
