"""Start every role of the chain as a local process on loopback, wire their
addresses together, wait until each health check says SERVING, keep them
serving, and stop them cleanly.

Instances and roles: dsp-1 and dsp-2 (DSPs), ssp, adserver, verifier. Their
settings come from the TOML files beside this module (or another folder);
ports, peer addresses, ledger paths and the token signing key are filled in
here.

The chain is supervised: a role whose process exits for any reason but our
own `stop()` is started again, after a backoff (services/local/supervision.py),
on the gRPC and metrics ports it had, so its peers, the addresses file and
Prometheus find it where it was; the other roles keep serving meanwhile. The
supervisor serves its own /metrics with the restarts per instance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from services.local import prometheus as local_prometheus
from services.local.supervision import Backoff, ChainMetrics

log = logging.getLogger(__name__)

DEFAULTS = Path(__file__).resolve().parent
DSPS = ("dsp-1", "dsp-2")
# Started back to front: DSPs before the roles that call them.
INSTANCES = {"dsp-1": "dsp", "dsp-2": "dsp", "ssp": "ssp", "adserver": "adserver", "verifier": "verifier"}
# How often the supervisor looks at every process, and how long one health
# check of a restarted role may hold up the others.
SUPERVISE_INTERVAL_S = 0.2
RESTART_CHECK_TIMEOUT_S = 0.25


@dataclasses.dataclass
class Process:
    name: str
    role: str
    popen: subprocess.Popen
    ready_file: Path
    log_file: Path
    grpc: str = ""
    metrics: str = ""
    # What it was started with, for starting it again.
    settings: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Watch:
    """One role in the supervision loop: "serving", "waiting" out its
    backoff, or "starting" again until it answers SERVING."""

    process: Process
    state: str = "serving"
    serving_since: float | None = None
    # Restarts in a row, for the backoff.
    attempt: int = 0
    # Waiting: when to start it; starting: when to give up on this start.
    due: float = 0.0
    channel: grpc.Channel | None = None

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


@dataclasses.dataclass
class LocalChain:
    processes: dict[str, Process]
    run_dir: Path
    prometheus: local_prometheus.LocalPrometheus | None = None
    data_dir: Path | None = None
    backoff: Backoff = Backoff()
    # How long a restarted role gets to answer SERVING before it is killed
    # and tried again.
    timeout_s: float = 60.0
    metrics: ChainMetrics = dataclasses.field(
        default_factory=lambda: ChainMetrics(tuple(INSTANCES), CollectorRegistry()))
    # host:port of the supervisor's own /metrics, once served.
    supervisor_metrics: str = ""
    _metrics_server: Any = None
    _stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None

    def addresses(self) -> dict[str, dict[str, str]]:
        """Every role's gRPC and metrics address by instance name, then the
        supervisor's and Prometheus's, which have no "grpc"."""
        found = {name: {"grpc": p.grpc, "metrics": p.metrics} for name, p in self.processes.items()}
        if self.supervisor_metrics:
            found["supervisor"] = {"metrics": self.supervisor_metrics}
        if self.prometheus is not None:
            found["prometheus"] = {"http": self.prometheus.address}
        return found

    def start_prometheus(self, interval_s: float = 1.0) -> local_prometheus.LocalPrometheus | None:
        """A local Prometheus scraping every role and the supervisor, with
        the shipped rules; None (and a warning) when the binary is not
        installed."""
        self.prometheus = local_prometheus.start(self.addresses(), self.run_dir, interval_s=interval_s)
        return self.prometheus

    def write_addresses(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.addresses(), indent=2) + "\n")
        os.replace(tmp, path)

    def serve_metrics(self, host: str) -> str:
        """Serve the supervisor's /metrics on `host`, a free port; returns
        its host:port."""
        server, _thread = start_http_server(0, addr=host, registry=self.metrics.registry)
        self._metrics_server = server
        self.supervisor_metrics = f"{_host_for_url(host)}:{server.server_port}"
        return self.supervisor_metrics

    def supervise(self, interval_s: float = SUPERVISE_INTERVAL_S) -> None:
        """Watch every process from a background thread until `stop()`."""
        now = time.monotonic()
        watches = [_Watch(p, serving_since=now) for p in self.processes.values()]
        for watch in watches:
            self.metrics.record_up(watch.process.name, True)
        self._supervisor = threading.Thread(target=self._supervise, args=(watches, interval_s),
                                            name="adchain-supervisor", daemon=True)
        self._supervisor.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Supervision first, so nothing stopped here is started again. Then
        Prometheus, if any, so it records no role as down. Then SIGTERM front
        to back (the exchange first, DSPs last, so notices still in flight
        find their receivers), and wait; kill stragglers."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        if self.prometheus is not None:
            self.prometheus.stop(timeout_s)
        order = ["ssp", "adserver", "verifier", *DSPS]
        for name in order:
            process = self.processes.get(name)
            if process is None or process.popen.poll() is not None:
                continue
            process.popen.send_signal(signal.SIGTERM)
            try:
                process.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", name, timeout_s)
                process.popen.kill()
                process.popen.wait()
        for name in self.processes:
            self.metrics.record_up(name, False)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

    def _supervise(self, watches: list[_Watch], interval_s: float) -> None:
        try:
            while not self._stopping.wait(interval_s):
                for watch in watches:
                    if self._stopping.is_set():
                        return
                    try:
                        self._step(watch, time.monotonic())
                    except Exception:
                        # One role's trouble (its log or config file unwritable)
                        # must not end the supervision of the others.
                        log.exception("supervising %s failed; trying again in %.0fs",
                                      watch.process.name, self.backoff.max_s)
                        watch.due = time.monotonic() + self.backoff.max_s
        finally:
            for watch in watches:
                watch.close_channel()

    def _step(self, watch: _Watch, now: float) -> None:
        if watch.state == "waiting":
            if now >= watch.due:
                self._restart(watch, now)
            return
        returncode = watch.process.popen.poll()
        if returncode is not None:
            self._exited(watch, returncode, now)
        elif watch.state == "starting":
            self._check_started(watch, now)

    def _exited(self, watch: _Watch, returncode: int, now: float) -> None:
        process = watch.process
        up_s = 0.0 if watch.serving_since is None else now - watch.serving_since
        watch.attempt = self.backoff.next_attempt(watch.attempt, up_s)
        delay_s = self.backoff.delay_s(watch.attempt)
        self.metrics.record_up(process.name, False)
        log.warning("%s exited with %s; restarting it in %.1fs (attempt %d), log %s",
                    process.name, returncode, delay_s, watch.attempt, process.log_file)
        watch.close_channel()
        watch.state, watch.due, watch.serving_since = "waiting", now + delay_s, None

    def _restart(self, watch: _Watch, now: float) -> None:
        process = watch.process
        process.settings = _on_bound_ports(process)
        process.popen = _launch(process.name, process.role, process.settings, self.run_dir)
        self.metrics.record_restart(process.name)
        watch.state, watch.due = "starting", now + self.timeout_s

    def _check_started(self, watch: _Watch, now: float) -> None:
        process = watch.process
        if watch.channel is None:
            ready = _read_ready(process)
            if ready is not None:
                if (ready["grpc"], ready["metrics"]) != (process.grpc, process.metrics):
                    log.warning("%s came back on %s (metrics %s), not %s (metrics %s)", process.name,
                                ready["grpc"], ready["metrics"], process.grpc, process.metrics)
                watch.channel = grpc.insecure_channel(process.grpc)
        if watch.channel is not None and _is_serving(watch.channel, RESTART_CHECK_TIMEOUT_S):
            watch.close_channel()
            watch.state, watch.serving_since = "serving", now
            self.metrics.record_up(process.name, True)
            log.info("%s is SERVING again on %s after restart %d", process.name, process.grpc, watch.attempt)
        elif now >= watch.due:
            log.warning("%s not SERVING %.0fs after its restart; killing it", process.name, self.timeout_s)
            # The next look sees it exit and backs off before the next try.
            process.popen.kill()


def start(config_dir: Path = DEFAULTS, run_dir: Path | None = None, host: str = "127.0.0.1",
          timeout_s: float = 60.0, prometheus: bool = False, data_dir: Path | None = None,
          ledger: bool = True, backoff: Backoff = Backoff()) -> LocalChain:
    """Start the whole chain, supervised; returns once every role is SERVING
    (and, with `prometheus`, a local Prometheus scraping it is ready, if
    installed).

    Each role keeps its ledger in `data_dir` (default: `data` in the run
    folder), so a chain started again on the same folder resumes the same
    counts; `ledger=False` starts the roles without one (counts in memory),
    to compare the two."""
    # Compile pricing_core's kernels into Numba's on-disk cache once, here,
    # so the roles load them instead of all compiling at once.
    from pricing_core.engine import warm_kernels

    warm_kernels()
    # Absolute: the roles run from the repository root, not from our cwd.
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="adchain-")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if ledger:
        data_dir = Path(data_dir).resolve() if data_dir is not None else run_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
    else:
        data_dir = None
    tokens = {"signing_key_id": "k1", "keys": [f"k1:{secrets.token_hex(32)}"]}
    chain = LocalChain({}, run_dir, data_dir=data_dir, backoff=backoff, timeout_s=timeout_s)

    def settings(name: str) -> dict:
        ledger_path = str(data_dir / f"{name}.sqlite") if data_dir is not None else ""
        return _settings(config_dir, name, host, ledger_path)

    try:
        chain.serve_metrics(host)
        for name in DSPS:
            chain.processes[name] = _spawn(name, "dsp", settings(name), run_dir)
        _wait_ready([chain.processes[n] for n in DSPS], timeout_s)
        dsps = [{"name": n, "address": chain.processes[n].grpc} for n in DSPS]
        wiring = {
            "ssp": {"dsps": dsps, "tokens": tokens},
            "adserver": {"dsps": dsps, "tokens": tokens},
            "verifier": {"dsps": dsps, "tokens": tokens},
        }
        for name, extra in wiring.items():
            chain.processes[name] = _spawn(name, INSTANCES[name], {**settings(name), **extra}, run_dir)
        _wait_ready([chain.processes[n] for n in wiring], timeout_s)
        for process in chain.processes.values():
            _wait_serving(process, timeout_s)
        chain.supervise()
        if prometheus:
            chain.start_prometheus()
    except BaseException:
        chain.stop(timeout_s=5.0)
        raise
    return chain


def _settings(config_dir: Path, name: str, host: str, ledger_path: str) -> dict:
    path = config_dir / f"{name}.toml"
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    server = {**data.get("server", {}), "name": name, "host": host, "grpc_port": 0, "metrics_port": 0}
    ledger = {**data.get("ledger", {}), "path": ledger_path}
    return {**data, "server": server, "ledger": ledger}


def _on_bound_ports(process: Process) -> dict:
    """The settings a replacement starts with: the first process's, on the
    ports it bound (the role binds with SO_REUSEADDR, so the port is free
    again the moment the old process is gone, even after a kill -9)."""
    server = {**process.settings["server"], "grpc_port": _port(process.grpc), "metrics_port": _port(process.metrics)}
    return {**process.settings, "server": server}


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _spawn(name: str, role: str, settings: dict, run_dir: Path) -> Process:
    popen = _launch(name, role, settings, run_dir)
    return Process(name, role, popen, run_dir / f"{name}.ready.json", run_dir / f"{name}.log", settings=settings)


def _launch(name: str, role: str, settings: dict, run_dir: Path) -> subprocess.Popen:
    config = run_dir / f"{name}.json"
    config.write_text(json.dumps(settings, indent=2))
    ready = run_dir / f"{name}.ready.json"
    # A ready file left by the process before means nothing about this one.
    ready.unlink(missing_ok=True)
    log_file = run_dir / f"{name}.log"
    with open(log_file, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "services", "serve", role, "--config", str(config), "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
    log.info("started %s (%s), pid %d, log %s", name, role, popen.pid, log_file)
    return popen


def _read_ready(process: Process) -> dict | None:
    """The addresses the process reported once serving, or None before then
    (the file is written atomically, so it is whole once it exists)."""
    if not process.ready_file.exists():
        return None
    return json.loads(process.ready_file.read_text())


def _wait_ready(processes: list[Process], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for process in processes:
        while (ready := _read_ready(process)) is None:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{_tail(process.log_file)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} not ready after {timeout_s:.0f}s:\n{_tail(process.log_file)}")
            time.sleep(0.05)
        process.grpc, process.metrics = ready["grpc"], ready["metrics"]


def _wait_serving(process: Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(process.grpc) as channel:
        while not _is_serving(channel, timeout_s=2.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} not SERVING after {timeout_s:.0f}s")
            time.sleep(0.05)


def _is_serving(channel: grpc.Channel, timeout_s: float) -> bool:
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                             timeout=timeout_s)
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
