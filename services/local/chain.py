"""Start every role of the chain as a local process on loopback, wire their
addresses together, wait until each health check says SERVING, and stop them
cleanly.

Instances and roles: dsp-1 and dsp-2 (DSPs), ssp, adserver, verifier. Their
settings come from the TOML files beside this module (or another folder);
ports, peer addresses and the token signing key are filled in here.
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
import time
import tomllib
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.local import prometheus as local_prometheus

log = logging.getLogger(__name__)

DEFAULTS = Path(__file__).resolve().parent
DSPS = ("dsp-1", "dsp-2")
# Started back to front: DSPs before the roles that call them.
INSTANCES = {"dsp-1": "dsp", "dsp-2": "dsp", "ssp": "ssp", "adserver": "adserver", "verifier": "verifier"}


@dataclasses.dataclass
class Process:
    name: str
    role: str
    popen: subprocess.Popen
    ready_file: Path
    log_file: Path
    grpc: str = ""
    metrics: str = ""


@dataclasses.dataclass
class LocalChain:
    processes: dict[str, Process]
    run_dir: Path
    prometheus: local_prometheus.LocalPrometheus | None = None

    def addresses(self) -> dict[str, dict[str, str]]:
        found = {name: {"grpc": p.grpc, "metrics": p.metrics} for name, p in self.processes.items()}
        if self.prometheus is not None:
            found["prometheus"] = {"http": self.prometheus.address}
        return found

    def start_prometheus(self, interval_s: float = 1.0) -> local_prometheus.LocalPrometheus | None:
        """A local Prometheus scraping every role, with the shipped rules;
        None (and a warning) when the binary is not installed."""
        self.prometheus = local_prometheus.start(self.addresses(), self.run_dir, interval_s=interval_s)
        return self.prometheus

    def write_addresses(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.addresses(), indent=2) + "\n")
        os.replace(tmp, path)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM front to back (the exchange first, DSPs last, so notices
        still in flight find their receivers), then wait; kill stragglers.
        Prometheus, if any, stops first so it records no role as down."""
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


def start(config_dir: Path = DEFAULTS, run_dir: Path | None = None, host: str = "127.0.0.1",
          timeout_s: float = 60.0, prometheus: bool = False) -> LocalChain:
    """Start the whole chain; returns once every role is SERVING (and, with
    `prometheus`, a local Prometheus scraping it is ready, if installed)."""
    # Compile pricing_core's kernels into Numba's on-disk cache once, here,
    # so the roles load them instead of all compiling at once.
    from pricing_core.engine import warm_kernels

    warm_kernels()
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="adchain-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    tokens = {"signing_key_id": "k1", "keys": [f"k1:{secrets.token_hex(32)}"]}
    chain = LocalChain({}, run_dir)
    try:
        for name in DSPS:
            chain.processes[name] = _spawn(name, "dsp", _settings(config_dir, name, host), run_dir)
        _wait_ready([chain.processes[n] for n in DSPS], timeout_s)
        dsps = [{"name": n, "address": chain.processes[n].grpc} for n in DSPS]
        wiring = {
            "ssp": {"dsps": dsps, "tokens": tokens},
            "adserver": {"dsps": dsps, "tokens": tokens},
            "verifier": {"dsps": dsps, "tokens": tokens},
        }
        for name, extra in wiring.items():
            chain.processes[name] = _spawn(name, INSTANCES[name], {**_settings(config_dir, name, host), **extra},
                                           run_dir)
        _wait_ready([chain.processes[n] for n in wiring], timeout_s)
        for process in chain.processes.values():
            _wait_serving(process, timeout_s)
        if prometheus:
            chain.start_prometheus()
    except BaseException:
        chain.stop(timeout_s=5.0)
        raise
    return chain


def _settings(config_dir: Path, name: str, host: str) -> dict:
    path = config_dir / f"{name}.toml"
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    server = {**data.get("server", {}), "name": name, "host": host, "grpc_port": 0, "metrics_port": 0}
    return {**data, "server": server}


def _spawn(name: str, role: str, settings: dict, run_dir: Path) -> Process:
    config = run_dir / f"{name}.json"
    config.write_text(json.dumps(settings, indent=2))
    ready = run_dir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    log_file = run_dir / f"{name}.log"
    with open(log_file, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "services", "serve", role, "--config", str(config), "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
    log.info("started %s (%s), pid %d, log %s", name, role, popen.pid, log_file)
    return Process(name, role, popen, ready, log_file)


def _wait_ready(processes: list[Process], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for process in processes:
        while not process.ready_file.exists():
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{_tail(process.log_file)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} not ready after {timeout_s:.0f}s:\n{_tail(process.log_file)}")
            time.sleep(0.05)
        ready = json.loads(process.ready_file.read_text())
        process.grpc, process.metrics = ready["grpc"], ready["metrics"]


def _wait_serving(process: Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(process.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} not SERVING after {timeout_s:.0f}s")
            time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
