"""The clients: what a page, app or player does with one opportunity, through
the chain's real RPCs, and the driver that runs many of them at once.

A client asks the exchange for an ad under its page's deadline, waits a
human render delay (or a bot's few milliseconds), fires the begin-to-render
beacon with its user agent and IP, lets the verification tag report its
measurement method and in-view samples, and clicks. A client that abandons,
is ad-blocked or prefetched never fires the beacon; a late one fires it after
the token expired; a retrying one fires it twice. Each action and its reason
goes into the ground truth.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

import grpc

from adchain.v1 import (ad_server_pb2, ad_server_pb2_grpc, exchange_pb2, exchange_pb2_grpc, verifier_pb2,
                        verifier_pb2_grpc)
from services.runtime.errors import field_violations
from loadtest.truth import BOT_CAUSE, Record, Truth
from loadtest.world import Opportunity

MTYPE_VIDEO = 2
# Bots do not wait for layout: known agents and data-center bots render in
# 5-60 ms, bots that look human in 2-20 ms (the SIVT fast-render signal).
BOT_RENDER_DELAY_MS = {"bot_known_agent": (5.0, 60.0), "bot_datacenter": (5.0, 60.0), "bot_human_like": (2.0, 20.0)}
RPC_TIMEOUT_S = 10.0
# The time an ad request may spend on its way to the exchange and back, on
# top of the page's own wait (which the exchange judges from arrival).
TRANSIT_ALLOWANCE_S = 2.0
OUTCOME_NAMES = {v: k.removeprefix("EVENT_OUTCOME_") for k, v in ad_server_pb2.EventOutcome.items()}
# The verifier's answers by the names its journal uses (viewable, not_viewable, ...).
EXPOSURE_NAMES = {v: k.removeprefix("EXPOSURE_CLASS_").lower() for k, v in verifier_pb2.ExposureClass.items()}


class Clients:
    """The RPC stubs every client shares (grpc.aio, one event loop), and the
    actions they take. Open them inside the loop that uses them (`open`)."""

    def __init__(self, addresses: Mapping[str, Mapping[str, str]], truth: Truth,
                 sample_interval_ms: tuple[int, int] = (100, 200), auction_type: int = 0, tmax_ms: int = 0):
        self._addresses = addresses
        self.truth = truth
        self._interval = sample_interval_ms
        self._auction_type = auction_type
        self._tmax_ms = tmax_ms
        self.latencies_ms: list[float] = []
        # Reseeded for each opportunity's draws (see exposure, render_delay_ms).
        self.rng = random.Random()
        self._channels: list[grpc.aio.Channel] = []

    def open(self) -> None:
        self._channels = [grpc.aio.insecure_channel(self._addresses[n]["grpc"])
                          for n in ("ssp", "adserver", "verifier")]
        self.exchange = exchange_pb2_grpc.ExchangeServiceStub(self._channels[0])
        self.ad_server = ad_server_pb2_grpc.AdServerServiceStub(self._channels[1])
        self.verifier = verifier_pb2_grpc.VerifierServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def request(self, op: Opportunity) -> tuple[Record, exchange_pb2.Ad | None]:
        """The ad call, under the page's own deadline. The page's wait travels
        in the request (caller_deadline_ms), judged by the exchange from when
        the request arrives, so a request held up on its way (a busy client
        or server) is still auctioned; the call's gRPC deadline adds the
        transit allowance. Only the exchange's own answer that the page's
        wait ran out makes the record `deadline_expired` (an auction that
        ran and was won): a call that timed out in transit is an error."""
        record = Record(key=op.request_id, user_kind=op.user.kind, pod_break=op.pod.break_name if op.pod else "")
        request = ad_request(op, self._auction_type, self._tmax_ms)
        request.caller_deadline_ms = int(op.deadline_ms)
        started = time.perf_counter()
        try:
            response = await self.exchange.RequestAd(request, timeout=op.deadline_ms / 1000.0 + TRANSIT_ALLOWANCE_S)
        except grpc.RpcError as error:
            code = error.code()
            page_gone = code == grpc.StatusCode.DEADLINE_EXCEEDED and "caller_deadline_ms" in field_violations(error)
            record.request = "deadline_expired" if page_gone else f"error_{code.name}"
            response = None
        self.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        if response is None:
            return record, None
        if not response.HasField("ad"):
            record.request = "no_fill_" + exchange_pb2.NoFillReason.Name(response.no_fill_reason).removeprefix(
                "NO_FILL_REASON_").lower()
            return record, None
        record.request = "returned"
        record.key = response.ad.impression_key
        return record, response.ad

    async def render(self, op: Opportunity, record: Record, ad: exchange_pb2.Ad) -> bool:
        """The begin-to-render beacon (and its retry); True when the tag runs next."""
        beacon = ad_server_pb2.RecordImpressionRequest(token=ad.token, user_agent=op.user.user_agent, ip=op.user.ip)
        try:
            answer = (await self.ad_server.RecordImpression(beacon, timeout=RPC_TIMEOUT_S)).outcome
            record.render_answer = OUTCOME_NAMES.get(answer, str(answer))
        except grpc.RpcError as error:
            record.render_answer = f"error_{error.code().name}"
        record.render = render_cause(op, record.render_answer)
        if op.retry:
            # The client did not see the acknowledgement and fires again.
            try:
                await self.ad_server.RecordImpression(beacon, timeout=RPC_TIMEOUT_S)
                record.duplicates_sent += 1
            except grpc.RpcError:
                pass
        # Bots fetch the pixel but never run the verification tag; a player
        # reporting late has lost its session, and its tag with it.
        return record.render == "rendered"

    async def report_exposure(self, op: Opportunity, record: Record, ad: exchange_pb2.Ad) -> None:
        request = exposure(op, ad, self.rng, self._interval)
        try:
            answer = await self.verifier.RecordExposure(request, timeout=RPC_TIMEOUT_S)
            record.tag = op.exposure if op.measurable else "unmeasurable"
            record.tag_answer = EXPOSURE_NAMES.get(answer.exposure_class, str(answer.exposure_class))
        except grpc.RpcError:
            record.tag = ""

    async def click(self, op: Opportunity, record: Record, ad: exchange_pb2.Ad) -> None:
        await click(self.ad_server, op, record, ad)


async def click(ad_server: ad_server_pb2_grpc.AdServerServiceStub, op: Opportunity, record: Record,
                ad: exchange_pb2.Ad) -> None:
    """The user clicks the ad: one click call (clicks are rare in either mode)."""
    try:
        await ad_server.RecordClick(ad_server_pb2.RecordClickRequest(
            token=ad.token, user_agent=op.user.user_agent, ip=op.user.ip), timeout=RPC_TIMEOUT_S)
        record.clicked = True
        # A conversion happens on the advertiser's site; the chain has no
        # RPC for it, so only the ground truth knows.
        record.converted = op.conversion
    except grpc.RpcError:
        pass


def render_cause(op: Opportunity, render_answer: str) -> str:
    """What the client's render was, as the ground truth knows it: a bot's
    invalid-traffic cause, a late pixel, or rendered when a valid client's
    beacon was accepted (whatever the ad server then decided)."""
    if op.user.kind != "human":
        return BOT_CAUSE[op.user.kind]
    if op.late:
        return "late_pixel"
    return "rendered" if not render_answer.startswith("error") else "render_failed"


def ad_request(op: Opportunity, auction_type: int = 0, tmax_ms: int = 0,
               request: exchange_pb2.RequestAdRequest | None = None) -> exchange_pb2.RequestAdRequest:
    """The opportunity as the page or player describes it (OpenRTB 2.6),
    written into `request` (an item of a batch) or a new message. Fields are
    set in place: building each sub-message and copying it in costs the load
    test several times the CPU."""
    if request is None:
        request = exchange_pb2.RequestAdRequest()
    p, (w, h), user = op.placement, op.size, op.user
    request.request_id, request.tmax_ms, request.at = op.request_id, tmax_ms, auction_type
    imp = request.imp
    imp.id, imp.bidfloor, imp.tagid = "1", p.floor_cpm, p.name
    if p.format == "video":
        video = imp.video
        video.mimes.append("video/mp4")
        video.w, video.h, video.minduration, video.maxduration = w, h, 5, 30
        if (pod := op.pod) is not None:
            # OpenRTB 2.6 §3.2.7 ad pod fields.
            video.podid, video.podseq, video.slotinpod = pod.podid, pod.podseq, pod.slotinpod
            video.poddur, video.maxseq = pod.poddur, pod.maxseq
    else:
        banner = imp.banner
        banner.w, banner.h = w, h
    if p.deal_id:
        imp.pmp.deals.add(id=p.deal_id, bidfloor=p.floor_cpm)
    device = request.device
    device.ua, device.ip, device.devicetype = user.user_agent, user.ip, p.device_type
    request.user.id = user.id
    if p.kind == "site":
        site = request.site
        site.domain, site.page = op.domain, f"https://{op.domain}/article"
    else:
        request.app.bundle = op.domain
    return request


def exposure(op: Opportunity, ad: exchange_pb2.Ad, rng: random.Random, interval_ms: tuple[int, int],
             request: verifier_pb2.RecordExposureRequest | None = None) -> verifier_pb2.RecordExposureRequest:
    """The verification tag's report: how it measured and what it saw, sampled
    every 100-200 ms from the render until the ad left the viewport. `rng`
    is reseeded from the run's seed and the opportunity, so the report is
    the same whenever it is made (reseeding one generator costs less than
    making one). Written into `request` (an item of a batch) or a new
    message; samples are added in place, as copying built ones in costs
    several times the CPU."""
    if request is None:
        request = verifier_pb2.RecordExposureRequest()
    request.token = ad.token
    if not op.measurable:
        # A cross-domain iframe without SafeFrame or OM SDK: no geometry.
        request.method = verifier_pb2.MEASUREMENT_METHOD_NONE
        return request
    needed_ms = 2000 if ad.mtype == MTYPE_VIDEO else 1000
    rng.seed(op.seed * 1_000_003 + op.index)
    randint = rng.randint
    if op.exposure == "engaged":
        percent, dwell_ms = (randint(55, 100), randint(needed_ms + 300, needed_ms * 3))
    elif op.exposure == "scrolled_past":
        percent, dwell_ms = (randint(55, 100), randint(100, needed_ms - 300))
    else:  # below the fold: never half in view
        percent, dwell_ms = (randint(0, 25), randint(500, 5000))
    kind = op.placement.kind
    request.method = (verifier_pb2.MEASUREMENT_METHOD_OM_SDK if kind in ("app", "ctv")
                      else verifier_pb2.MEASUREMENT_METHOD_SAFEFRAME if op.index % 4 == 0
                      else verifier_pb2.MEASUREMENT_METHOD_GEOMETRY)
    add, (shortest, longest), t = request.samples.add, interval_ms, 0
    while t <= dwell_ms:
        add(offset_ms=t, in_view_percent=percent)
        t += randint(shortest, longest)
    add(offset_ms=t, in_view_percent=0)  # scrolled away or ad ended
    return request


def render_delay_ms(op: Opportunity, ad: exchange_pb2.Ad, rng: random.Random) -> float:
    """How long the client waits before its beacon: a human's layout and
    paint, a bot's few milliseconds (drawn from `rng`, reseeded from the
    opportunity), a late client until past the token's expiry."""
    if op.user.kind != "human":
        rng.seed(op.index)
        return rng.uniform(*BOT_RENDER_DELAY_MS[op.user.kind])
    if op.late:
        return max(0.0, ad.expires_at_ms - time.time() * 1000.0) + op.render_delay_ms
    return op.render_delay_ms


class Driver:
    """Runs opportunities as coroutines on one event loop: ad requests start
    at the scenario's rate (or as fast as the chain answers), at most
    `concurrency` of them in flight and `max_open` opportunities open; each
    client then waits its own render delay, fires its beacon, lets its tag
    report and clicks. Bounding the requests in flight keeps the chain
    within what it can answer: an overloaded exchange would queue pages
    past their deadlines, a mechanism the scenario did not ask for."""

    def __init__(self, clients: Clients, concurrency: int, rate_per_s: float = 0.0,
                 max_open: int | None = None, clock: Callable[[], float] = time.monotonic):
        self._clients = clients
        self._rate = rate_per_s
        self._concurrency = concurrency
        self._max_open = max_open or concurrency * 16
        self._clock = clock
        self.started = 0
        self.finished = 0
        self.requests_done = 0

    @property
    def latencies_ms(self) -> list[float]:
        """Every ad request's latency as its client saw it."""
        return self._clients.latencies_ms

    def run(self, plan: list[Opportunity], deadline: float, drain_s: float = 30.0) -> bool:
        """Start each opportunity until the plan or the time runs out; wait for
        the open ones to finish. Returns False when the time limit cut it short."""
        return asyncio.run(self._run(plan, deadline, drain_s))

    async def _run(self, plan: list[Opportunity], deadline: float, drain_s: float) -> bool:
        self._clients.open()
        self._in_flight = asyncio.Semaphore(self._concurrency)
        open_slots = asyncio.Semaphore(self._max_open)
        tasks: set[asyncio.Task] = set()
        began = self._clock()
        complete = True
        try:
            for i, op in enumerate(plan):
                if self._rate:
                    wait = began + i / self._rate - self._clock()
                    if wait > 0:
                        await asyncio.sleep(wait)
                while True:
                    try:
                        # Unlike wait_for, a timeout scope runs the acquire without a task of its own.
                        async with asyncio.timeout(0.2):
                            await open_slots.acquire()
                        break
                    except TimeoutError:
                        if self._clock() > deadline:
                            break
                if self._clock() > deadline:
                    complete = False
                    break
                self.started += 1
                task = asyncio.create_task(self._guard(op, open_slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                end = max(deadline, self._clock()) + drain_s
                _done, pending = await asyncio.wait(list(tasks), timeout=max(0.0, end - self._clock()))
                for task in pending:
                    task.cancel()
            complete = complete and self.finished == self.started
        finally:
            await self._clients.close()
        return complete

    async def _guard(self, op: Opportunity, open_slots: asyncio.Semaphore) -> None:
        try:
            record = await self._opportunity(op)
        except Exception:  # an unexpected failure still closes the opportunity
            record = Record(key=op.request_id, user_kind=op.user.kind, request="error_client")
            raise
        finally:
            open_slots.release()
            self._clients.truth.add(record)
            self.finished += 1

    async def _opportunity(self, op: Opportunity) -> Record:
        clients = self._clients
        async with self._in_flight:
            record, ad = await clients.request(op)
        self.requests_done += 1
        if ad is None or op.fate != "render":
            if ad is not None:
                record.render = op.fate
            return record
        await asyncio.sleep(render_delay_ms(op, ad, clients.rng) / 1000.0)
        if await clients.render(op, record, ad):
            await clients.report_exposure(op, record, ad)
            if op.click:
                await clients.click(op, record, ad)
        return record
