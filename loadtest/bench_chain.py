"""Benchmark of the chain as a system: `python -m loadtest.bench_chain` prints a
table, `--json` one JSON object, `--quick` shorter phases.

Everything is measured in one run on the same machine, each figure beside the
baseline it is judged by:
- serving model: a do-nothing BidderService handler on the roles' own stack
  (the runtime: grpc.aio, wrapped handlers, health), on bare grpc.aio and on
  grpcio's threaded server, RPC/s;
- each role's unary RPC at its maximum (closed loop) and its p50/p99 at half
  of that load (open loop), and the DSP's Bid as a ratio of the do-nothing
  handler;
- each batch and stream RPC in items/s;
- seed-example end to end, per-event clients and bulk, opportunities/s, CPU
  microseconds per opportunity per role and peak resident memory per role.

The load comes from this process (grpc.aio clients); the roles run as their
own processes, as `adchain up` starts them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from adchain.v1 import (ad_server_pb2, ad_server_pb2_grpc, bidder_pb2, bidder_pb2_grpc, exchange_pb2,
                        exchange_pb2_grpc, openrtb_pb2, verifier_pb2, verifier_pb2_grpc)
from services.runtime.peers import MESSAGE_LIMIT_OPTIONS

FULL_SCALE_WON = 5_200_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Targets: the DSP's Bid against the do-nothing handler, per-event seed-example
# opportunities/s, the bulk run at full scale, RequestAd's tail at half load, and what
# the ledger costs (bulk wall time and per-event rate, ledger on against off).
TARGET_BID_RATIO = 0.8
TARGET_PER_EVENT_OPS = 1_000
TARGET_FULL_SCALE_S = 300
TARGET_P99_OVER_P50 = 3.0
TARGET_LEDGER_BULK_RATIO = 1.3
TARGET_LEDGER_PER_EVENT_RATIO = 0.9


def bid_request() -> openrtb_pb2.BidRequest:
    return openrtb_pb2.BidRequest(
        id="bench", at=1, tmax=200,
        imp=[openrtb_pb2.Imp(id="1", bidfloor=0.5, banner=openrtb_pb2.Banner(w=300, h=250))],
        site=openrtb_pb2.Site(domain="news.example", page="https://news.example/a"),
        device=openrtb_pb2.Device(ua="Mozilla/5.0", ip="192.0.2.1", devicetype=2),
        user=openrtb_pb2.User(id="u1"))


def ad_request(i: int = 0) -> exchange_pb2.RequestAdRequest:
    return exchange_pb2.RequestAdRequest(
        request_id=f"b{i}", imp=openrtb_pb2.Imp(id="1", bidfloor=0.5, banner=openrtb_pb2.Banner(w=300, h=250)),
        site=openrtb_pb2.Site(domain="news.example", page="https://news.example/a"),
        device=openrtb_pb2.Device(ua="Mozilla/5.0", ip="192.0.2.1", devicetype=2),
        user=openrtb_pb2.User(id=f"u{i % 5000}"))


# -- load -----------------------------------------------------------------

async def closed_loop(call: Callable, request_for: Callable[[int], object], concurrency: int,
                      duration_s: float, start: int = 0) -> tuple[float, int]:
    """`concurrency` callers back to back for `duration_s`: (calls/s, calls made)."""
    made = [start]
    stop_at = time.perf_counter() + duration_s

    async def caller():
        while time.perf_counter() < stop_at:
            i = made[0]
            made[0] += 1
            await call(request_for(i), timeout=10)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    n = made[0] - start
    return n / (time.perf_counter() - began), made[0]


async def open_loop(call: Callable, request_for: Callable[[int], object], rate_per_s: float, duration_s: float,
                    start: int = 0) -> tuple[list[float], int]:
    """Calls started at a fixed rate, whatever the answers do: latencies in ms."""
    latencies: list[float] = []
    n = max(1, int(rate_per_s * duration_s))

    async def one(i: int):
        began = time.perf_counter()
        await call(request_for(start + i), timeout=10)
        latencies.append((time.perf_counter() - began) * 1000.0)

    began = time.perf_counter()
    tasks = []
    for i in range(n):
        wait = began + i / rate_per_s - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, start + n


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def rpc_figures(call, request_for, seconds: float, pid: int, concurrency: int = 32,
                      start: int = 0) -> tuple[dict, int]:
    """Max RPC/s and the serving process's CPU per call at it, then p50/p99
    at half of it. CPU per call is the steadier figure on a shared machine."""
    await call(request_for(start), timeout=10)  # connect
    cpu_before = cpu_seconds(pid)
    made_before = start + 1
    rate, used = await closed_loop(call, request_for, concurrency, seconds, made_before)
    cpu_us = (cpu_seconds(pid) - cpu_before) * 1e6 / max(1, used - made_before)
    latencies, used = await open_loop(call, request_for, rate / 2, seconds, used)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {"rpc_per_s": round(rate), "server_cpu_us_per_call": round(cpu_us), "half_load_p50_ms": round(p50, 3),
            "half_load_p99_ms": round(p99, 3), "p99_over_p50": round(p99 / p50, 2) if p50 else None}, used


# -- processes ----------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def start_baseline(kind: str) -> tuple[subprocess.Popen, str]:
    """A do-nothing BidderService in its own process: `runtime` on the roles'
    own server stack, `aio` on bare grpc.aio, `threaded` on grpcio's threaded server."""
    popen = subprocess.Popen([sys.executable, "-m", "loadtest.baseline_server", kind], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
    address = popen.stdout.readline().strip()
    if not address:
        popen.kill()
        raise RuntimeError(f"the {kind} baseline server did not start")
    return popen, address


async def measure_baselines(seconds: float) -> dict:
    found = {}
    for kind in ("runtime", "aio", "threaded"):
        popen, address = start_baseline(kind)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = bidder_pb2_grpc.BidderServiceStub(channel)
                request = bid_request()
                figures, _ = await rpc_figures(stub.Bid, lambda i: request, seconds, popen.pid)
                found[kind] = figures
        finally:
            popen.terminate()
            popen.wait(10)
    return found


def chain_config(folder: Path, overrides: dict[str, dict]) -> Path:
    """The local chain's default settings with `overrides` merged per instance."""
    import tomllib

    from loadtest.run import to_toml
    from services.local.chain import DEFAULTS, INSTANCES

    folder.mkdir(parents=True, exist_ok=True)
    for name in INSTANCES:
        data = tomllib.loads((DEFAULTS / f"{name}.toml").read_text())
        for section, values in overrides.get(name, {}).items():
            data.setdefault(section, {}).update(values)
        (folder / f"{name}.toml").write_text(to_toml(data))
    return folder


async def measure_roles(addresses: dict, pids: dict[str, int], seconds: float) -> dict:
    """Each role's unary RPC and its batch and stream RPCs, DSP delays at 0."""
    results: dict = {}
    channels = {n: grpc.aio.insecure_channel(addresses[n]["grpc"], options=MESSAGE_LIMIT_OPTIONS)
                for n in ("dsp-1", "ssp", "adserver", "verifier")}
    try:
        dsp = bidder_pb2_grpc.BidderServiceStub(channels["dsp-1"])
        ssp = exchange_pb2_grpc.ExchangeServiceStub(channels["ssp"])
        adserver = ad_server_pb2_grpc.AdServerServiceStub(channels["adserver"])
        verifier = verifier_pb2_grpc.VerifierServiceStub(channels["verifier"])
        request = bid_request()
        results["dsp.Bid"], _ = await rpc_figures(dsp.Bid, lambda i: request, seconds, pids["dsp-1"])
        results["ssp.RequestAd"], _ = await rpc_figures(ssp.RequestAd, ad_request, seconds, pids["ssp"])
        # Tokens to render and measure: real ads from the exchange, fetched in batches.
        tokens = await fetch_tokens(ssp, int(seconds * 12_000))
        used = [0]

        def beacon(i: int):
            return ad_server_pb2.RecordImpressionRequest(token=tokens[i % len(tokens)], user_agent="Mozilla/5.0",
                                                         ip="192.0.2.1")

        results["adserver.RecordImpression"], used[0] = await rpc_figures(adserver.RecordImpression, beacon, seconds,
                                                                             pids["adserver"])
        samples = [verifier_pb2.InViewSample(offset_ms=t, in_view_percent=80) for t in range(0, 1400, 150)]

        def report(i: int):
            return verifier_pb2.RecordExposureRequest(token=tokens[i % len(tokens)], samples=samples,
                                                      method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY)

        results["verifier.RecordExposure"], _ = await rpc_figures(verifier.RecordExposure, report, seconds,
                                                                pids["verifier"])
        fresh = await fetch_tokens(ssp, 20_000)
        results["ssp.RequestAds"] = await batch_items_per_s(
            lambda items: ssp.RequestAds(exchange_pb2.RequestAdsRequest(items=items), timeout=30),
            [ad_request(i) for i in range(500)], seconds)
        results["adserver.RecordImpressions"] = await batch_items_per_s(
            lambda items: adserver.RecordImpressions(ad_server_pb2.RecordImpressionsRequest(items=items), timeout=30),
            [beacon(0).__class__(token=t, user_agent="Mozilla/5.0", ip="192.0.2.1") for t in fresh[:10_000]],
            seconds, batch=1000, once=True)
        results["verifier.RecordExposures"] = await batch_items_per_s(
            lambda items: verifier.RecordExposures(verifier_pb2.RecordExposuresRequest(items=items), timeout=30),
            [verifier_pb2.RecordExposureRequest(token=t, samples=samples,
                                                method=verifier_pb2.MEASUREMENT_METHOD_GEOMETRY)
             for t in fresh[10_000:]], seconds, batch=1000, once=True)
        results["dsp.BidStream"] = await bid_stream_items_per_s(dsp, seconds)
        # Loss notices for real outstanding bids, each counted once per bid.
        bids = await fetch_bids(dsp, 10_000)
        results["dsp.NotifyLosses"] = await batch_items_per_s(
            lambda items: dsp.NotifyLosses(bidder_pb2.NotifyLossesRequest(items=items), timeout=30),
            [bidder_pb2.NotifyLossRequest(bid_id=bid.id, campaign_id=bid.cid,
                                          macros=bidder_pb2.AuctionMacros(loss=102)) for bid in bids],
            seconds, batch=1000, once=True)
    finally:
        for channel in channels.values():
            await channel.close()
    return results


async def fetch_tokens(ssp, n: int) -> list[str]:
    tokens: list[str] = []
    while len(tokens) < n:
        response = await ssp.RequestAds(exchange_pb2.RequestAdsRequest(items=[ad_request(i) for i in range(500)]),
                                        timeout=30)
        tokens.extend(r.response.ad.token for r in response.results if r.response.HasField("ad"))
    return tokens[:n]


async def fetch_bids(dsp, n: int) -> list[openrtb_pb2.Bid]:
    """`n` real bids from the DSP, 64 bid requests in flight."""
    request = bid_request()
    found: list[openrtb_pb2.Bid] = []
    while len(found) < n:
        answers = await asyncio.gather(*(dsp.Bid(request, timeout=10) for _ in range(64)))
        found.extend(bid for answer in answers for seatbid in answer.seatbid for bid in seatbid.bid)
    return found[:n]


async def batch_items_per_s(call, items: list, seconds: float, batch: int = 500, once: bool = False) -> dict:
    """Items/s of a batch RPC, 4 batches in flight; `once` plays each item
    once (items that are counted once per key)."""
    chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
    done = [0]
    stop_at = time.perf_counter() + seconds
    next_chunk = [0]

    async def sender():
        while time.perf_counter() < stop_at:
            k = next_chunk[0]
            if once and k >= len(chunks):
                return
            next_chunk[0] += 1
            chunk = chunks[k % len(chunks)]
            await call(chunk)
            done[0] += len(chunk)

    began = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(4)))
    return {"items_per_s": round(done[0] / (time.perf_counter() - began)), "batch": batch}


async def bid_stream_items_per_s(dsp, seconds: float, per_message: int = 250, messages_in_flight: int = 2) -> dict:
    """Bid requests over one BidStream, `per_message` to a message (as the
    exchange sends a RequestAds batch), `messages_in_flight` messages'
    worth outstanding at a time."""
    window = asyncio.Semaphore(messages_in_flight * per_message)
    stop_at = time.perf_counter() + seconds
    base = bid_request()
    sent = [0]

    async def requests():
        while time.perf_counter() < stop_at:
            message = bidder_pb2.BidStreamRequest()
            for _ in range(per_message):
                await window.acquire()
                request = message.items.add()
                request.CopyFrom(base)
                request.id = f"s{sent[0]}"
                sent[0] += 1
            yield message

    began = time.perf_counter()
    answered = 0
    async for message in dsp.BidStream(requests()):
        answered += len(message.results)
        for _ in message.results:
            window.release()
    return {"items_per_s": round(answered / (time.perf_counter() - began)), "per_message": per_message}


def end_to_end(scale: float, bulk: bool, workdir: Path, ledger: bool = True) -> dict:
    """seed-example through a local chain it starts (each role on its ledger,
    or with `ledger=False` in memory): opportunities/s, CPU µs per
    opportunity per role, peak resident memory per role."""
    from loadtest import run as runs
    from loadtest import scenario as scenarios
    from services.local import chain as local_chain

    world = scenarios.load("seed-example")
    config = runs.write_chain_config(world, workdir / "config")
    chain = local_chain.start(config, workdir / "chain", ledger=ledger)
    try:
        pids = {name: p.popen.pid for name, p in chain.processes.items()}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        report = runs.run(world, scale=scale, seed=1, addresses=chain.addresses(), progress=None, bulk=bulk)
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        n = report["truth"]["other"]["opportunities"] if "truth" in report else None
        n = n or round(world.traffic.opportunities * scale)
        cpu = {name: round((cpu_seconds(pid) - before[name]) * 1e6 / n) for name, pid in pids.items()}
        cpu["loadtest"] = round(((own_after.ru_utime + own_after.ru_stime)
                                 - (own_before.ru_utime + own_before.ru_stime)) * 1e6 / n)
        rss = {name: peak_rss_bytes(pid) for name, pid in pids.items()}
        wall_s = report["throughput"]["wall_s"]
        return {"opportunities": n, "wall_s": wall_s, "opportunities_per_s": round(n / wall_s),
                "passed": report["passed"], "cpu_us_per_opportunity": cpu, "peak_rss_bytes": rss,
                "stages": {s["stage"]: s["count"] for s in report["stages"]}}
    finally:
        chain.stop()


async def measure_services(workdir: Path, seconds: float) -> dict:
    from pricing_core.engine import warm_kernels
    from services.local import chain as local_chain

    warm_kernels()
    config = chain_config(workdir / "roles-config", {
        "dsp-1": {"dsp": {"response_delay_ms": 0.0, "response_jitter_ms": 0.0}},
        "dsp-2": {"dsp": {"response_delay_ms": 0.0, "response_jitter_ms": 0.0}},
    })
    chain = local_chain.start(config, workdir / "roles")
    try:
        pids = {name: p.popen.pid for name, p in chain.processes.items()}
        return await measure_roles(chain.addresses(), pids, seconds)
    finally:
        chain.stop()


def measure(quick: bool) -> dict:
    seconds = 1.5 if quick else 4.0
    scale = 0.0005 if quick else 0.002
    workdir = Path(tempfile.mkdtemp(prefix="adchain-bench-"))
    result: dict = {"baselines": asyncio.run(measure_baselines(seconds))}
    result["roles"] = asyncio.run(measure_services(workdir, seconds))
    # Every role on its ledger, as adchain up runs them; the same runs with
    # the ledger off (counts in memory) beside them, for what durability costs.
    result["end_to_end"] = {
        "per_event": end_to_end(scale, bulk=False, workdir=workdir / "per-event"),
        "per_event_no_ledger": end_to_end(scale, bulk=False, workdir=workdir / "per-event-off", ledger=False),
        "bulk": end_to_end(scale * 5, bulk=True, workdir=workdir / "bulk"),
        "bulk_no_ledger": end_to_end(scale * 5, bulk=True, workdir=workdir / "bulk-off", ledger=False),
    }
    runs = result["end_to_end"]
    baseline = result["baselines"]["runtime"]["rpc_per_s"]
    bulk = result["end_to_end"]["bulk"]
    result["ratios"] = {
        "dsp_bid_over_do_nothing": round(result["roles"]["dsp.Bid"]["rpc_per_s"] / baseline, 2),
        "aio_over_runtime_do_nothing": round(result["baselines"]["aio"]["rpc_per_s"] / baseline, 2),
        "runtime_over_threaded_do_nothing": round(baseline / result["baselines"]["threaded"]["rpc_per_s"], 2),
        "dsp_bid_cpu_over_do_nothing_cpu": round(result["roles"]["dsp.Bid"]["server_cpu_us_per_call"]
                                                 / max(1, result["baselines"]["runtime"]["server_cpu_us_per_call"]), 2),
        "request_ad_p99_over_p50": result["roles"]["ssp.RequestAd"]["p99_over_p50"],
        "per_event_opportunities_per_s": result["end_to_end"]["per_event"]["opportunities_per_s"],
        # Extrapolated from the bulk run's rate; the real full-scale run is
        # `adchain loadtest seed-example --scale 1 --bulk`.
        "bulk_full_scale_projected_s": round(FULL_SCALE_WON / bulk["opportunities_per_s"]),
        "bulk_ledger_on_over_off_wall": round(bulk["wall_s"] / runs["bulk_no_ledger"]["wall_s"], 2),
        "per_event_ledger_on_over_off": round(runs["per_event"]["opportunities_per_s"]
                                              / runs["per_event_no_ledger"]["opportunities_per_s"], 2),
    }
    return result


def table(result: dict) -> str:
    lines = ["serving model: do-nothing BidderService handler (closed loop, 32 callers)"]
    for kind, figures in result["baselines"].items():
        lines.append(f"  {kind:<10} {figures['rpc_per_s']:>8,} RPC/s  {figures['server_cpu_us_per_call']:>5} µs CPU/call"
                     f"   half load p50 {figures['half_load_p50_ms']:.2f} ms"
                     f"  p99 {figures['half_load_p99_ms']:.2f} ms")
    lines.append("\nroles (DSP response delay 0)")
    for name, figures in result["roles"].items():
        if "rpc_per_s" in figures:
            lines.append(f"  {name:<28} {figures['rpc_per_s']:>8,} RPC/s  {figures['server_cpu_us_per_call']:>5} µs CPU/call"
                         f"   half load p50 "
                         f"{figures['half_load_p50_ms']:.2f} ms  p99 {figures['half_load_p99_ms']:.2f} ms")
        else:
            lines.append(f"  {name:<28} {figures['items_per_s']:>8,} items/s")
    lines.append("\nseed-example end to end")
    for mode, figures in result["end_to_end"].items():
        cpu = "  ".join(f"{k} {v}" for k, v in figures["cpu_us_per_opportunity"].items())
        rss = "  ".join(f"{k} {v / 2**20:.0f}" for k, v in figures["peak_rss_bytes"].items())
        lines.append(f"  {mode:<10} {figures['opportunities']:>8,} opportunities in {figures['wall_s']:.1f}s = "
                     f"{figures['opportunities_per_s']:,}/s  expectations {'met' if figures['passed'] else 'MISSED'}")
        lines.append(f"             CPU µs/opportunity: {cpu}")
        lines.append(f"             peak RSS MiB: {rss}")
    r = result["ratios"]
    lines.append("\nagainst the targets")
    lines.append(f"  DSP Bid / do-nothing handler       {r['dsp_bid_over_do_nothing']:.2f}   (>= {TARGET_BID_RATIO})")
    lines.append(f"  DSP Bid CPU / do-nothing CPU       {r['dsp_bid_cpu_over_do_nothing_cpu']:.2f}")
    lines.append(f"  bare grpc.aio / runtime do-nothing {r['aio_over_runtime_do_nothing']:.2f}")
    lines.append(f"  runtime / threaded do-nothing      {r['runtime_over_threaded_do_nothing']:.2f}")
    lines.append(f"  per-event opportunities/s          {r['per_event_opportunities_per_s']:,}   "
                 f"(>= {TARGET_PER_EVENT_OPS:,})")
    lines.append(f"  bulk full scale, projected         {r['bulk_full_scale_projected_s']:,} s   "
                 f"(<= {TARGET_FULL_SCALE_S})")
    lines.append(f"  RequestAd p99 / p50 at half load   {r['request_ad_p99_over_p50']}   (<= {TARGET_P99_OVER_P50})")
    lines.append(f"  bulk wall, ledger on / off         {r['bulk_ledger_on_over_off_wall']:.2f}   "
                 f"(<= {TARGET_LEDGER_BULK_RATIO})")
    lines.append(f"  per-event rate, ledger on / off    {r['per_event_ledger_on_over_off']:.2f}   "
                 f"(>= {TARGET_LEDGER_PER_EVENT_RATIO})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_chain", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="short phases and a small end-to-end run")
    args = parser.parse_args(argv)
    result = measure(args.quick)
    print(json.dumps(result, indent=2) if args.json else table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
