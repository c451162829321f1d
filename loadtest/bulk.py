"""The bulk mode: the same world, behaviours and ground truth as the per-event
clients, played through the chain's batch RPCs, as an edge collector or a
server-side ad insertion service forwards many pages' calls at once.

Nothing is decided here that a service decides in the per-event mode. Each
ad request carries its page's own deadline (`caller_deadline_ms`) and the
exchange judges it against the time the auction really took; a DSP's latency
is a real delay of its answer; renders are fired when their (real) render
delay has passed, so the ad server judges fast renders, expiry, duplicates,
invalid traffic and caps by its own clock; the verification tags' in-view
samples go to the verifier, which decides measurable and viewable. The load
test only records what each client did, as the per-event clients do.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable, Mapping, Sequence

import grpc

from adchain.v1 import (ad_server_pb2, ad_server_pb2_grpc, exchange_pb2, exchange_pb2_grpc, verifier_pb2_grpc,
                        verifier_pb2)
from loadtest.behaviour import (EXPOSURE_NAMES, OUTCOME_NAMES, RPC_TIMEOUT_S, ad_request, click, exposure, render_cause,
                                render_delay_ms)
from loadtest.truth import Record, Truth
from loadtest.world import Opportunity
from services.runtime.peers import MESSAGE_LIMIT_OPTIONS

# google.rpc.Code of an item whose page gave up before the auction ended.
DEADLINE_EXCEEDED = 4
_CODE_NAMES = {0: "OK", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 13: "INTERNAL"}


class BulkDriver:
    """Plays opportunities `batch_size` at a time through RequestAds, with up
    to `batches_in_flight` batches open; renders and tag reports are batched
    by when they are due, flushed every `flush_ms`."""

    def __init__(self, addresses: Mapping[str, Mapping[str, str]], truth: Truth,
                 sample_interval_ms: tuple[int, int] = (100, 200), auction_type: int = 0, tmax_ms: int = 0,
                 batch_size: int = 250, batches_in_flight: int = 2, flush_ms: float = 20.0,
                 clock: Callable[[], float] = time.monotonic):
        self._addresses = addresses
        self.truth = truth
        self._interval = sample_interval_ms
        self._auction_type = auction_type
        self._tmax_ms = tmax_ms
        self._batch_size = batch_size
        self._batches_in_flight = batches_in_flight
        self._flush_s = flush_ms / 1000.0
        self._clock = clock
        self.latencies_ms: list[float] = []
        self.started = 0
        self.finished = 0
        self.requests_done = 0
        # (due, seq, op, record, ad): renders waiting for their delay.
        self._renders: list[tuple[float, int, Opportunity, Record, exchange_pb2.Ad]] = []
        self._seq = itertools.count()
        self._exposures: list[tuple[Opportunity, Record, exchange_pb2.Ad]] = []
        self._open_tasks: set[asyncio.Task] = set()
        # Reseeded for each opportunity's draws (see exposure, render_delay_ms).
        self._rng = random.Random()

    def run(self, plan: Sequence[Opportunity], deadline: float) -> bool:
        """Play the plan until it or the time runs out; False when cut short."""
        return asyncio.run(self._run(plan, deadline))

    async def _run(self, plan: Sequence[Opportunity], deadline: float) -> bool:
        channels = [grpc.aio.insecure_channel(self._addresses[n]["grpc"], options=MESSAGE_LIMIT_OPTIONS)
                    for n in ("ssp", "adserver", "verifier")]
        self._exchange = exchange_pb2_grpc.ExchangeServiceStub(channels[0])
        self._ad_server = ad_server_pb2_grpc.AdServerServiceStub(channels[1])
        self._verifier = verifier_pb2_grpc.VerifierServiceStub(channels[2])
        self._requests_open = True
        flusher = asyncio.create_task(self._flush_loop())
        complete = True
        try:
            slots = asyncio.Semaphore(self._batches_in_flight)
            requests = []
            for start in range(0, len(plan), self._batch_size):
                await slots.acquire()
                if self._clock() > deadline:
                    slots.release()
                    complete = False
                    break
                chunk = plan[start:start + self._batch_size]
                self.started += len(chunk)
                requests.append(asyncio.create_task(self._request_batch(chunk, slots)))
            await asyncio.gather(*requests)
            self._requests_open = False
            await flusher
            if self._open_tasks:
                await asyncio.gather(*self._open_tasks)
        finally:
            self._requests_open = False
            if not flusher.done():
                flusher.cancel()
            for channel in channels:
                await channel.close()
        return complete and self.finished == self.started

    async def _request_batch(self, chunk: Sequence[Opportunity], slots: asyncio.Semaphore) -> None:
        try:
            request = exchange_pb2.RequestAdsRequest()
            add = request.items.add
            for op in chunk:
                ad_request(op, self._auction_type, self._tmax_ms, add(caller_deadline_ms=int(op.deadline_ms)))
            records = [Record(key=op.request_id, user_kind=op.user.kind,
                              pod_break=op.pod.break_name if op.pod else "") for op in chunk]
            sent = time.perf_counter()
            try:
                results = (await self._exchange.RequestAds(request, timeout=RPC_TIMEOUT_S)).results
            except grpc.RpcError as error:
                results = None
                for record in records:
                    record.request = f"error_{error.code().name}"
            elapsed_ms = (time.perf_counter() - sent) * 1000.0
            received = self._clock()
            self.requests_done += len(chunk)
            self.latencies_ms.extend(itertools.repeat(elapsed_ms, len(chunk)))
            if results is None:
                for record in records:
                    self._done(record)
                return
            for op, record, result in zip(chunk, records, results, strict=True):
                ad = self._read_result(result, record)
                if ad is None or op.fate != "render":
                    if ad is not None:
                        record.render = op.fate
                    self._done(record)
                    continue
                heapq.heappush(self._renders, (received + render_delay_ms(op, ad, self._rng) / 1000.0,
                                               next(self._seq), op, record, ad))
        finally:
            slots.release()

    @staticmethod
    def _read_result(result: exchange_pb2.RequestAdResult, record: Record) -> exchange_pb2.Ad | None:
        code = result.status.code
        if code == DEADLINE_EXCEEDED:
            record.request = "deadline_expired"  # the page gave up before its ad came back
            return None
        if code != 0:
            record.request = f"error_{_CODE_NAMES.get(code, str(code))}"
            return None
        answer = result.response
        if not answer.HasField("ad"):
            record.request = "no_fill_" + exchange_pb2.NoFillReason.Name(answer.no_fill_reason).removeprefix(
                "NO_FILL_REASON_").lower()
            return None
        record.request = "returned"
        record.key = answer.ad.impression_key
        return answer.ad

    async def _flush_loop(self) -> None:
        """Every flush interval: fire the renders that are due and the tag
        reports that are waiting, each as one batch call."""
        while self._requests_open or self._renders or self._exposures:
            await asyncio.sleep(self._flush_s)
            now = self._clock()
            due = []
            while self._renders and self._renders[0][0] <= now and len(due) < self._batch_size * 4:
                _at, _seq, op, record, ad = heapq.heappop(self._renders)
                due.append((op, record, ad))
            if due:
                self._spawn(self._render_batch(due))
            if self._exposures:
                reports, self._exposures = self._exposures, []
                self._spawn(self._exposure_batch(reports))
        while self._open_tasks:
            await asyncio.gather(*list(self._open_tasks))
            # A render batch may have queued tag reports after the loop saw none.
            if self._exposures:
                reports, self._exposures = self._exposures, []
                self._spawn(self._exposure_batch(reports))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._open_tasks.add(task)
        task.add_done_callback(self._open_tasks.discard)

    async def _render_batch(self, due: list[tuple[Opportunity, Record, exchange_pb2.Ad]]) -> None:
        """The begin-to-render beacons; a client that did not see its
        acknowledgement fires again, and that repeat rides in the same batch
        (the ad server must count the key once)."""
        request, owners = ad_server_pb2.RecordImpressionsRequest(), []
        add = request.items.add
        for index, (op, _record, ad) in enumerate(due):
            add(token=ad.token, user_agent=op.user.user_agent, ip=op.user.ip)
            owners.append(index)
            if op.retry:
                add(token=ad.token, user_agent=op.user.user_agent, ip=op.user.ip)
                owners.append(-1 - index)
        try:
            results = list((await self._ad_server.RecordImpressions(request, timeout=RPC_TIMEOUT_S)).results)
        except grpc.RpcError as error:
            results = None
            failure = f"error_{error.code().name}"
        clicks = []
        for position, owner in enumerate(owners):
            op, record, ad = due[owner if owner >= 0 else -1 - owner]
            if owner < 0:
                if results is not None:
                    record.duplicates_sent += 1
                continue
            if results is None:
                record.render_answer = failure
            elif results[position].status.code != 0:
                record.render_answer = f"error_{_CODE_NAMES.get(results[position].status.code, 'UNKNOWN')}"
            else:
                answer = results[position].response.outcome
                record.render_answer = OUTCOME_NAMES.get(answer, str(answer))
            record.render = render_cause(op, record.render_answer)
        for op, record, ad in due:
            if record.render == "rendered":
                self._exposures.append((op, record, ad))
                if op.click:
                    clicks.append((op, record, ad))
            else:
                self._done(record)
        if clicks:
            await asyncio.gather(*(click(self._ad_server, *c) for c in clicks))

    async def _exposure_batch(self, reports: list[tuple[Opportunity, Record, exchange_pb2.Ad]]) -> None:
        request = verifier_pb2.RecordExposuresRequest()
        add = request.items.add
        for op, _record, ad in reports:
            exposure(op, ad, self._rng, self._interval, add())
        try:
            results = list((await self._verifier.RecordExposures(request, timeout=RPC_TIMEOUT_S)).results)
        except grpc.RpcError:
            results = None
        for i, (op, record, _ad) in enumerate(reports):
            if results is not None and results[i].status.code == 0:
                record.tag = op.exposure if op.measurable else "unmeasurable"
                answer = results[i].response.exposure_class
                record.tag_answer = EXPOSURE_NAMES.get(answer, str(answer))
            self._done(record)

    def _done(self, record: Record) -> None:
        self.truth.add(record)
        self.finished += 1

