"""How long a role takes to start on a ledger holding millions of events.

`python -m loadtest.bench_restart [--events N] [--json]` (`make bench-restart`)
writes, per role, the ledger N events leave behind, through the ledger's own
tables and in the shapes the roles write them (keys that sort by time; for
the DSP a bid, a win, a billing and most of the time a viewable event per
impression, and the spend accruals in notice batches; for the ad server a
verdict with its viewer per impression, a minute of them recent enough to
rebuild the invalid-traffic window), then starts each role's process on it
and times it from spawn to SERVING. In the same run it times the same start
on an empty ledger: the ratio is what the ledger's size costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from pricing_core.engine import BILLED_IMPRESSION, VIEWABLE
from services.local.chain import DEFAULTS, _is_serving
from services.runtime.store import LedgerStore

ROOT = Path(__file__).resolve().parents[1]
TOKENS = {"signing_key_id": "k1", "keys": ["k1:" + "ab" * 32]}
# An address nothing listens on: the roles' peers are not part of the start.
NO_PEER = "127.0.0.1:9"
ROLES = {"dsp-1": "dsp", "ssp": "ssp", "adserver": "adserver", "verifier": "verifier"}
CHUNK = 50_000
BATCH = 250  # notices per accrual row, as a bulk run's batches carry them


def keys(n: int, start_ms: int, rng: random.Random) -> list[str]:
    """Impression keys as the exchange makes them: time in ms, then random hex."""
    step = max(1, 3_600_000 // max(n, 1))
    return [f"{start_ms + i * step // 1000:012x}{rng.getrandbits(80):020x}:1" for i in range(n)]


def fill(name: str, path: Path, events: int, seed: int = 1) -> float:
    """The ledger `events` impressions leave at `name`; seconds it took."""
    started = time.perf_counter()
    rng = random.Random(seed)
    store = LedgerStore(path)
    now_ms = int(time.time() * 1000)
    first_ms = now_ms - 3_600_000
    campaigns = [c["id"] for c in tomllib.loads((DEFAULTS / "dsp-1.toml").read_text())["campaigns"]]
    for at in range(0, events, CHUNK):
        n = min(CHUNK, events - at)
        chunk = keys(n, first_ms + at * 3_600_000 // events, rng)
        times = [first_ms + (at + i) * 3_600_000 // events for i in range(n)]
        if name == "dsp-1":
            bids = [f"{first_ms:012x}abcdef{at + i:010x}" for i in range(n)]
            campaign = [campaigns[i % len(campaigns)] for i in range(n)]
            store.executemany("INSERT INTO keys VALUES ('bid', ?, 1e12, ?, ?)",
                              [(b, c, rng.getrandbits(62)) for b, c in zip(bids, campaign)])
            store.executemany("INSERT INTO keys VALUES ('win', ?, 1e12, NULL, NULL)", [(b,) for b in bids])
            store.executemany("INSERT INTO keys VALUES ('billing', ?, 1e12, NULL, NULL)", [(k,) for k in chunk])
            store.executemany("INSERT INTO keys VALUES ('event', ?, 1e12, NULL, NULL)",
                              [(f"{k}/viewable",) for k in chunk[: n * 2 // 3]])
            store.executemany("INSERT INTO journal VALUES (?, 'won', '', ?, '', ?, '')",
                              list(zip(chunk, campaign, times)))
            rows = []
            for b in range(0, n, BATCH):
                size = min(BATCH, n - b)
                kind = np.where(np.arange(size) % 3 == 2, VIEWABLE, BILLED_IMPRESSION).astype(np.int8)
                rows.append((times[b] / 1000.0, "\n".join(campaigns),
                             (np.arange(size) % len(campaigns)).astype(np.int32).tobytes(),
                             np.where(kind == BILLED_IMPRESSION, 6000, 0).astype(np.int64).tobytes(),
                             kind.tobytes(), np.zeros(size, np.int64).tobytes()))
            store.executemany("INSERT INTO accruals VALUES (NULL, ?, ?, ?, ?, ?, ?)", rows)
        elif name == "adserver":
            store.executemany("INSERT INTO journal VALUES (?, 'rendered', '', 'brand-display', 'dsp-1', ?, ?)",
                              [(k, t, f"u{rng.getrandbits(20)}") for k, t in zip(chunk, times)])
        elif name == "verifier":
            store.executemany("INSERT INTO journal VALUES (?, ?, '', 'brand-display', 'dsp-1', ?, '')",
                              [(k, "viewable" if i % 3 else "not_viewable", t)
                               for i, (k, t) in enumerate(zip(chunk, times))])
        else:
            store.executemany("INSERT INTO journal VALUES (?, 'returned', '', 'brand-display', 'dsp-1', ?, '')",
                              list(zip(chunk, times)))
        store.commit()
    stage = {"dsp-1": "won", "ssp": "returned", "adserver": "rendered", "verifier": "measurable"}[name]
    store.executemany("INSERT INTO counts VALUES (?, ?, ?, ?)", [(stage, "", "brand-display", events)])
    store.commit()
    store.close()
    return time.perf_counter() - started


def settings(name: str, ledger: Path, folder: Path) -> Path:
    data = tomllib.loads((DEFAULTS / f"{name}.toml").read_text())
    data["server"] = {"name": name, "host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0}
    data["ledger"] = {"path": str(ledger)}
    if name != "dsp-1":
        data.update(dsps=[{"name": "dsp-1", "address": NO_PEER}], tokens=TOKENS)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def time_start(name: str, config: Path, folder: Path) -> dict:
    """Seconds from spawn to SERVING, and the process's resident memory then."""
    import grpc

    ready = folder / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(folder / f"{name}.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "services", "serve", ROLES[name], "--config", str(config),
                                    "--ready-file", str(ready)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {folder / (name + '.log')}")
            time.sleep(0.01)
        address = json.loads(ready.read_text())["grpc"]
        with grpc.insecure_channel(address) as channel:
            while not _is_serving(channel, 1.0):
                time.sleep(0.01)
        seconds = time.perf_counter() - started
        rss = _rss_bytes(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    return {"seconds": round(seconds, 2), "rss_mib": round(rss / 2 ** 20)}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", type=Path, help="where the ledgers go (default: a temp dir; they are large)")
    args = parser.parse_args(argv)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="adchain-restart-"))
    folder.mkdir(parents=True, exist_ok=True)
    from pricing_core.engine import warm_kernels

    warm_kernels()  # compiled once here, so neither start below pays for it
    result = {"events": args.events, "roles": {}}
    for name in ROLES:
        empty = folder / f"{name}-empty.sqlite"
        full = folder / f"{name}.sqlite"
        built_s = fill(name, full, args.events)
        fill(name, empty, 0)
        row = {"ledger_mib": round(sum(p.stat().st_size for p in folder.glob(f"{name}.sqlite*")) / 2 ** 20),
               "fill_s": round(built_s, 1)}
        row["empty"] = time_start(name, settings(name, empty, folder), folder)
        row["full"] = time_start(name, settings(name, full, folder), folder)
        row["ratio"] = round(row["full"]["seconds"] / row["empty"]["seconds"], 2)
        result["roles"][name] = row
        for path in folder.glob(f"{name}*.sqlite*"):
            os.remove(path)
        if not args.json:
            print(f"{name:<10} {args.events:,} events, ledger {row['ledger_mib']:,} MiB: start {row['full']['seconds']:.2f} s "
                  f"(empty ledger {row['empty']['seconds']:.2f} s, x{row['ratio']}), "
                  f"RSS {row['full']['rss_mib']} MiB (empty {row['empty']['rss_mib']} MiB)", flush=True)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
