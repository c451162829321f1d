"""The fan-out's wait: every bid request under its own tmax, measured from
when it was sent (OpenRTB 2.6 §3.2.1 tmax), each complete as soon as every
DSP answered it."""

from __future__ import annotations

import asyncio
import time

from adchain.v1 import bidder_pb2, openrtb_pb2
from services.ssp.bidstream import ANSWERED, COALESCE_ITEMS, ERROR, TIMEOUT, Answer, BidRound, BidStreams

DSPS = ("dsp-1", "dsp-2")


def bid_requests(*tmax_ms: int) -> list[openrtb_pb2.BidRequest]:
    return [openrtb_pb2.BidRequest(id=f"a{i}", tmax=t) for i, t in enumerate(tmax_ms)]


def sent_round(requests, forgotten: list | None = None, clock=time.monotonic) -> BidRound:
    forgotten = [] if forgotten is None else forgotten
    bid_round = BidRound(requests, DSPS, lambda dsp, request_id: forgotten.append((dsp, request_id)), clock)
    bid_round.sent(range(len(requests)))
    return bid_round


def answered(request_id: str = "") -> Answer:
    return Answer(ANSWERED, openrtb_pb2.BidResponse(id=request_id))


async def completed(bid_round: BidRound) -> list:
    return [item async for ready in bid_round.completed() for item in ready]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_a_request_completes_as_soon_as_every_dsp_answered():
    async def scenario():
        bid_round = sent_round(bid_requests(10_000))
        bid_round.answer(0, "dsp-1", answered())
        bid_round.answer(0, "dsp-2", answered())
        started = time.monotonic()
        done = await completed(bid_round)
        return done, time.monotonic() - started

    ((index, answers),), elapsed_s = run(scenario())
    assert elapsed_s < 1.0  # not held to its 10 s tmax
    assert index == 0 and {d: a.outcome for d, a in answers.items()} == {"dsp-1": ANSWERED, "dsp-2": ANSWERED}


def test_a_dsp_that_has_not_answered_by_tmax_is_a_timeout_and_is_forgotten():
    forgotten: list = []

    async def scenario():
        bid_round = sent_round(bid_requests(30), forgotten)
        bid_round.answer(0, "dsp-1", answered())
        started = time.monotonic()
        done = await completed(bid_round)
        return done, time.monotonic() - started

    ((_index, answers),), elapsed_s = run(scenario())
    assert 0.025 <= elapsed_s < 1.0
    assert {d: a.outcome for d, a in answers.items()} == {"dsp-1": ANSWERED, "dsp-2": TIMEOUT}
    assert forgotten == [("dsp-2", "a0")]  # its stream stops waiting for the answer


def test_an_answer_after_tmax_is_dropped():
    async def scenario():
        bid_round = sent_round(bid_requests(10))
        ((_index, answers),) = await completed(bid_round)
        bid_round.answer(0, "dsp-1", answered())
        return answers

    assert {a.outcome for a in run(scenario()).values()} == {TIMEOUT}


def test_requests_complete_in_the_order_they_finish_each_under_its_own_tmax():
    async def scenario():
        bid_round = sent_round(bid_requests(2_000, 40, 2_000))
        for dsp in DSPS:
            bid_round.answer(2, dsp, answered())
        bid_round.answer(0, "dsp-1", answered())
        asyncio.get_running_loop().call_later(0.1, bid_round.answer, 0, "dsp-2", answered())
        return [(index, sorted(a.outcome for a in answers.values())) for index, answers in await completed(bid_round)]

    assert run(scenario()) == [(2, [ANSWERED, ANSWERED]), (1, [TIMEOUT, TIMEOUT]), (0, [ANSWERED, ANSWERED])]


def test_the_first_answer_a_dsp_gives_is_the_one_kept():
    async def scenario():
        bid_round = sent_round(bid_requests(1_000))
        bid_round.answer(0, "dsp-1", Answer(ERROR))
        bid_round.answer(0, "dsp-1", answered())
        bid_round.answer(0, "dsp-2", answered())
        ((_index, answers),) = await completed(bid_round)
        return answers

    assert run(scenario())["dsp-1"].outcome == ERROR


def test_an_answer_that_arrives_after_tmax_is_a_timeout_even_before_the_auction_looks():
    now = [0.0]

    async def scenario():
        bid_round = sent_round(bid_requests(100), clock=lambda: now[0])
        bid_round.answer(0, "dsp-1", answered())
        now[0] = 0.101  # dsp-2 answers 101 ms after the request left
        bid_round.answer(0, "dsp-2", answered())
        ((_index, answers),) = await completed(bid_round)
        return answers

    assert {d: a.outcome for d, a in run(scenario()).items()} == {"dsp-1": ANSWERED, "dsp-2": TIMEOUT}



class RecordingBidder:
    """A DSP's BidStream that records how many requests each message it
    receives carries, and answers every request (with no bid)."""

    def __init__(self):
        self.message_sizes: list[int] = []

    def BidStream(self, requests):
        return _RecordingCall(requests, self.message_sizes)


class _RecordingCall:
    def __init__(self, requests, sizes: list[int]):
        self._requests = requests
        self._sizes = sizes

    def cancel(self) -> None:
        pass

    async def __aiter__(self):
        async for message in self._requests:
            self._sizes.append(len(message.items))
            yield bidder_pb2.BidStreamResponse(results=[
                bidder_pb2.BidStreamResult(request_id=r.id, response=openrtb_pb2.BidResponse(id=r.id))
                for r in message.items])


def test_requests_queued_behind_a_write_leave_in_one_message_and_each_is_answered():
    bidder = RecordingBidder()

    async def scenario():
        streams = BidStreams({"dsp-1": bidder})
        # Five ad calls in one turn of the loop, before the stream writes anything.
        rounds = [streams.ask([openrtb_pb2.BidRequest(id=f"r{i}", tmax=1000)]) for i in range(5)]
        answers = [await completed(r) for r in rounds]
        await streams.close()
        return answers

    answers = run(scenario())
    assert bidder.message_sizes == [5]
    assert [a[0][1]["dsp-1"].outcome for a in answers] == [ANSWERED] * 5


def test_a_batch_message_is_never_joined_past_the_coalescing_limit():
    bidder = RecordingBidder()

    async def scenario():
        streams = BidStreams({"dsp-1": bidder})
        batch = streams.ask([openrtb_pb2.BidRequest(id=f"b{i}", tmax=1000) for i in range(COALESCE_ITEMS)])
        single = streams.ask([openrtb_pb2.BidRequest(id="s", tmax=1000)])
        done = (await completed(batch), await completed(single))
        await streams.close()
        return done

    batch_answers, single_answers = run(scenario())
    assert bidder.message_sizes == [COALESCE_ITEMS, 1]
    assert len(batch_answers) == COALESCE_ITEMS and len(single_answers) == 1
