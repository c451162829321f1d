"""`adchain loadtest`: play a scenario's world against a running chain (an
addresses file) or against a local chain it starts and configures from the
scenario, then report from the services' own counts."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from loadtest import audit as audits
from loadtest import report as reports
from loadtest import world
from loadtest.behaviour import Clients, Driver
from loadtest.bulk import BulkDriver
from loadtest.scenario import CHAIN_INSTANCES, Scenario
from loadtest.truth import Truth
from services import reconcile


def write_chain_config(scenario: Scenario, folder: Path) -> Path:
    """The local chain's settings folder: the scenario's settings for each
    instance it names, the local defaults for the rest."""
    from services.local.chain import DEFAULTS

    folder.mkdir(parents=True, exist_ok=True)
    for name in CHAIN_INSTANCES:
        if name in scenario.chain:
            (folder / f"{name}.toml").write_text(to_toml(scenario.chain[name]))
        else:
            (folder / f"{name}.toml").write_text((DEFAULTS / f"{name}.toml").read_text())
    return folder


def to_toml(data: Mapping[str, Any]) -> str:
    """TOML for role settings: scalars, lists of scalars, tables and arrays of tables."""
    lines: list[str] = []
    _emit(data, (), lines)
    return "\n".join(lines) + "\n"


def _emit(table: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and not _is_tables(v)}
    if path and scalars:
        lines.append(f"[{'.'.join(path)}]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            _emit(value, (*path, _key(key)), lines)
        elif _is_tables(value):
            for item in value:
                lines.append(f"[[{'.'.join((*path, _key(key)))}]]")
                for k, v in item.items():
                    lines.append(f"{_key(k)} = {_value(v)}")


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


class Progress:
    """A progress bar on stderr: opportunities done, rate, ETA."""

    def __init__(self, driver: Driver | BulkDriver, total: int, out: TextIO = sys.stderr, interval_s: float = 0.25):
        self._driver, self._total, self._out, self._interval = driver, total, out, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._tty = getattr(out, "isatty", lambda: False)()
        self._began = time.monotonic()

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._draw(final=True)

    def _run(self) -> None:
        last_line = 0.0
        while not self._stop.wait(self._interval):
            if self._tty or time.monotonic() - last_line >= 5.0:
                self._draw()
                last_line = time.monotonic()

    def _draw(self, final: bool = False) -> None:
        done, elapsed = self._driver.finished, max(1e-6, time.monotonic() - self._began)
        rate = done / elapsed
        eta = (self._total - done) / rate if rate > 0 else float("inf")
        filled = int(30 * done / max(1, self._total))
        line = (f"[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{self._total:,} opportunities  "
                f"{rate:,.0f}/s  ETA {eta:,.0f}s" if eta != float("inf") else f"{done:,}/{self._total:,}")
        end = "\n" if final or not self._tty else ""
        self._out.write(("\r" if self._tty else "") + line + end)
        self._out.flush()


def run(scenario: Scenario, *, scale: float = 1.0, seed: int = 1, addresses: Mapping | None = None,
        max_duration_s: float | None = None, max_opportunities: int | None = None, run_dir: Path | None = None,
        progress: TextIO | None = sys.stderr, bulk: bool = False, data_dir: Path | None = None) -> dict:
    """Run the scenario; returns the report (a JSON-ready dict). `bulk`
    plays it through the batch RPCs (loadtest.bulk) instead of one client
    per opportunity. `data_dir` is where the local chain it starts keeps its
    ledgers (default: inside the run folder)."""
    notes: list[str] = []
    chain = None
    if addresses is None:
        from services.local import chain as local_chain

        run_dir = Path(run_dir or tempfile.mkdtemp(prefix="adchain-loadtest-"))
        config = write_chain_config(scenario, run_dir / "config")
        chain = local_chain.start(config, run_dir / "chain", data_dir=data_dir)
        addresses = chain.addresses()
    elif scenario.chain:
        notes.append("against a running chain the scenario's chain settings (" + ", ".join(sorted(scenario.chain))
                     + ": DSP latencies, campaigns, exchange settings) cannot be applied; that chain's own apply")
    try:
        plan = world.plan(scenario, scale, seed, max_opportunities)
        truth = Truth()
        interval_ms = scenario.behaviour.exposure.sample_interval_ms
        traffic = scenario.traffic
        before = reconcile.chain_counts(reconcile.read_snapshots(addresses))
        # An explicit limit (a full-scale run needs more than a scenario's
        # default) replaces the scenario's.
        limit_s = scenario.limits.max_duration_s if max_duration_s is None else max_duration_s
        if bulk:
            driver = BulkDriver(addresses, truth, interval_ms, traffic.auction_type, traffic.tmax_ms)
        else:
            clients = Clients(addresses, truth, interval_ms, traffic.auction_type, traffic.tmax_ms)
            driver = Driver(clients, traffic.concurrency, traffic.rate_per_s)
        began = time.monotonic()
        began_ms = int(time.time() * 1000)
        if progress is not None:
            with Progress(driver, len(plan), progress):
                complete = driver.run(plan, deadline=began + limit_s)
        else:
            complete = driver.run(plan, deadline=began + limit_s)
        wall_s = time.monotonic() - began
        if not complete:
            notes.append(f"stopped by the time limit after {driver.started:,} of {len(plan):,} opportunities")
        after = _settled_counts(addresses)
        result = reports.build(scenario, scale, seed, before, after, truth, driver.latencies_ms, wall_s, complete,
                               notes)
        result["throughput"]["mode"] = "bulk" if bulk else "per_event"
        kept = audits.audit(truth.records(), addresses, began_ms, before, after)
        for row in result["stages"]:
            row.update(kept[row["stage"]])
        return result
    finally:
        if chain is not None:
            chain.stop()


def _settled_counts(addresses: Mapping, timeout_s: float = 90.0) -> reconcile.ChainCounts:
    """Counts once every notice still owed (win and loss notices in flight,
    billing and event notices in an outbox or waiting to retry) has landed
    or failed for good, and two reads in a row agree. The timeout outlasts a
    notice's retry window (a minute by default)."""
    deadline = time.monotonic() + timeout_s
    snapshots = reconcile.read_snapshots(addresses)
    counts = reconcile.chain_counts(snapshots)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        owed = sum(s.notices_owed for s in snapshots.values())
        snapshots = reconcile.read_snapshots(addresses)
        again = reconcile.chain_counts(snapshots)
        if again == counts and not owed and not sum(s.notices_owed for s in snapshots.values()):
            return again
        counts = again
    return counts
