"""Win and loss notices batched per DSP, on the exchange's event loop: each
counted by its own result, a failed batch fails every notice in it, and drain
waits for every answer up to its timeout."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import code_pb2

from adchain.v1 import batch_pb2, bidder_pb2
from services.ssp.notices import LOSS, WIN, NoticeBatches
from services.ssp.settings import ExchangeSettings


class Method:
    """An aio stub method: answers each batch after `delay_s`, or fails it
    with the RpcError `answer` raises."""

    def __init__(self, answer, delay_s: float = 0.01):
        self.batches: list[list] = []
        self._answer = answer
        self._delay_s = delay_s

    async def __call__(self, request, timeout):
        self.batches.append(list(request.items))
        await asyncio.sleep(self._delay_s)
        return self._answer(request)


class Failed(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE


class Stub:
    def __init__(self, refuse_bid: str = "", down: bool = False, delay_s: float = 0.01):
        def wins(request):
            if down:
                raise Failed()
            return bidder_pb2.NotifyWinsResponse(results=[
                bidder_pb2.NotifyWinResult(status=batch_pb2.ItemStatus(code=code_pb2.NOT_FOUND, field="bid_id"))
                if item.bid_id == refuse_bid else bidder_pb2.NotifyWinResult() for item in request.items])

        self.NotifyWins = Method(wins, delay_s)
        self.NotifyLosses = Method(lambda request: bidder_pb2.NotifyLossesResponse(
            results=[bidder_pb2.NotifyLossResult() for _ in request.items]), delay_s)


class Recorded:
    def __init__(self):
        self.counts: dict[tuple[str, str], int] = {}

    def __call__(self, kind, outcome, n=1):
        self.counts[(kind, outcome)] = self.counts.get((kind, outcome), 0) + n


def notices(stubs, **settings) -> tuple[NoticeBatches, Recorded]:
    recorded = Recorded()
    return NoticeBatches(stubs, ExchangeSettings(**settings), recorded), recorded


def win(bid_id: str) -> bidder_pb2.NotifyWinRequest:
    return bidder_pb2.NotifyWinRequest(bid_id=bid_id)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_each_notice_is_counted_by_its_own_result():
    stub = Stub(refuse_bid="b2")
    batches, recorded = notices({"dsp-1": stub})

    async def scenario():
        for bid_id in ("b1", "b2", "b3"):
            batches.send("dsp-1", WIN, win(bid_id))
        batches.send("dsp-1", LOSS, bidder_pb2.NotifyLossRequest(bid_id="b4"))
        return await batches.drain(5.0)

    assert run(scenario()) == 0
    assert recorded.counts == {(WIN, "sent"): 2, (WIN, "failed"): 1, (LOSS, "sent"): 1}
    assert [[n.bid_id for n in b] for b in stub.NotifyWins.batches] == [["b1", "b2", "b3"]]


def test_a_batch_that_fails_fails_every_notice_in_it():
    batches, recorded = notices({"dsp-1": Stub(down=True)})

    async def scenario():
        for bid_id in ("b1", "b2"):
            batches.send("dsp-1", WIN, win(bid_id))
        return await batches.drain(5.0)

    assert run(scenario()) == 0
    assert recorded.counts == {(WIN, "failed"): 2}


def test_a_batch_leaves_at_max_items_without_waiting_for_the_delay():
    stub = Stub()
    batches, recorded = notices({"dsp-1": stub}, notice_batch_max_items=2, notice_batch_max_delay_ms=60_000)

    async def scenario():
        batches.send("dsp-1", WIN, win("b1"))
        batches.send("dsp-1", WIN, win("b2"))
        while recorded.counts.get((WIN, "sent")) != 2:
            await asyncio.sleep(0.005)
        batches.send("dsp-1", WIN, win("b3"))
        await asyncio.sleep(0.1)
        assert [len(b) for b in stub.NotifyWins.batches] == [2]  # the third waits for company or the delay
        return await batches.drain(5.0)  # ...or for shutdown

    assert run(scenario()) == 0
    assert recorded.counts == {(WIN, "sent"): 3}


def test_each_dsp_gets_only_its_own_notices():
    stubs = {"dsp-1": Stub(), "dsp-2": Stub()}
    batches, _recorded = notices(stubs)

    async def scenario():
        batches.send("dsp-1", WIN, win("one"))
        batches.send("dsp-2", WIN, win("two"))
        await batches.drain(5.0)

    run(scenario())
    assert [n.bid_id for b in stubs["dsp-1"].NotifyWins.batches for n in b] == ["one"]
    assert [n.bid_id for b in stubs["dsp-2"].NotifyWins.batches for n in b] == ["two"]


def test_drain_counts_the_notices_still_unanswered_at_its_timeout_as_failed():
    stub = Stub(delay_s=60.0)
    batches, recorded = notices({"dsp-1": stub})

    async def scenario():
        batches.send("dsp-1", WIN, win("b1"))
        batches.send("dsp-1", LOSS, bidder_pb2.NotifyLossRequest(bid_id="b2"))
        return await batches.drain(0.1)

    assert run(scenario()) == 2
    assert recorded.counts == {(WIN, "failed"): 1, (LOSS, "failed"): 1}


@pytest.mark.parametrize("field, value, problem", [
    ("notice_batch_max_items", 0, "notice_batch_max_items: must be at least 1"),
    ("notice_batch_max_delay_ms", -1, "notice_batch_max_delay_ms: must not be negative"),
])
def test_the_batch_settings_are_validated(field, value, problem):
    assert ExchangeSettings(**{field: value}).validate("exchange") == [f"exchange.{problem}"]


def test_the_batch_settings_default_to_256_notices_or_20_ms():
    settings = ExchangeSettings()
    assert (settings.notice_batch_max_items, settings.notice_batch_max_delay_ms) == (256, 20)
    assert settings.validate("exchange") == []
