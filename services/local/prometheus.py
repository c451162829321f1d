"""A local Prometheus beside the local chain: scrapes every role's /metrics
with the shipped rules loaded (deploy/prometheus/rules), on loopback, with
1-second intervals so rules and dashboards move while a load runs.

The scrape job is the one in deploy/prometheus/prometheus.yml; only the
paths (absolute, into the run dir) and the intervals differ. A second job
scrapes the chain's supervisor (its restarts per instance) when the addresses
name one; it exists only under `adchain up`, so the shipped file has no such
job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "rules"
JOB = "adchain"
SUPERVISOR_JOB = "adchain-supervisor"


@dataclasses.dataclass
class LocalPrometheus:
    popen: subprocess.Popen
    address: str
    config_file: Path
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("prometheus did not stop within %.0fs; killing it", timeout_s)
            self.popen.kill()
            self.popen.wait()


def role_of(name: str) -> str:
    """Role of an instance name (dsp-1 -> dsp)."""
    return "dsp" if name.startswith("dsp") else name


def targets(addresses: Mapping[str, Mapping[str, str]]) -> list[dict]:
    """File service discovery targets: one per role instance (an entry
    with a gRPC address), labelled with its instance name and role."""
    return [{"targets": [where["metrics"]], "labels": {"instance": name, "role": role_of(name)}}
            for name, where in addresses.items() if "grpc" in where and "metrics" in where]


def supervisor_targets(addresses: Mapping[str, Mapping[str, str]]) -> list[dict]:
    """The supervisor's /metrics, when the addresses name one."""
    where = addresses.get("supervisor", {})
    return [{"targets": [where["metrics"]], "labels": {"instance": "supervisor"}}] if "metrics" in where else []


def config(targets_file: Path, interval_s: float = 1.0, supervisor_file: Path | None = None) -> dict:
    """The run's configuration (JSON is YAML, so Prometheus reads it as is)."""
    interval = f"{round(interval_s * 1000)}ms"
    jobs = [(JOB, targets_file)] + ([(SUPERVISOR_JOB, supervisor_file)] if supervisor_file is not None else [])
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES / "*.yml")],
        # honor_labels for the supervisor too: its series name the role they
        # are about in `instance`, which must not become exported_instance.
        "scrape_configs": [{
            "job_name": job,
            "honor_labels": True,
            "file_sd_configs": [{"files": [str(path)], "refresh_interval": "5s"}],
        } for job, path in jobs],
    }


def start(addresses: Mapping[str, Mapping[str, str]], run_dir: Path, *, binary: str | None = None,
          interval_s: float = 1.0, timeout_s: float = 30.0) -> LocalPrometheus | None:
    """Start Prometheus scraping `addresses` (as `adchain up --addresses`
    writes them); returns once it is ready, or None when no `prometheus`
    binary is installed."""
    binary = binary or shutil.which("prometheus")
    if binary is None:
        log.warning("prometheus is not installed (not on PATH); continuing without it")
        return None
    home = Path(run_dir) / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    targets_file = home / "targets.json"
    _write_json(targets_file, targets(addresses))
    supervisor_file = None
    if supervisor := supervisor_targets(addresses):
        supervisor_file = home / "supervisor.json"
        _write_json(supervisor_file, supervisor)
    config_file = home / "prometheus.yml"
    _write_json(config_file, config(targets_file, interval_s, supervisor_file))
    log_file = home / "prometheus.log"
    # The free port is found by binding port 0 and closing it; another process
    # can take it in between, so a start that fails is tried on a new port.
    for attempt in range(3):
        address = f"127.0.0.1:{_free_port()}"
        with open(log_file, "ab") as out:
            popen = subprocess.Popen(
                [binary, f"--config.file={config_file}", f"--storage.tsdb.path={home / 'data'}",
                 f"--web.listen-address={address}", "--storage.tsdb.retention.time=1d"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home,
            )
        prometheus = LocalPrometheus(popen, address, config_file, log_file)
        try:
            _wait_ready(prometheus, timeout_s)
        except RuntimeError:
            if attempt == 2:
                raise
            log.warning("prometheus exited during start-up; trying another port")
            continue
        except BaseException:
            prometheus.stop(timeout_s=5.0)
            raise
        log.info("prometheus on %s, pid %d, log %s", prometheus.url, popen.pid, log_file)
        return prometheus
    raise AssertionError("unreachable")


def _wait_ready(prometheus: LocalPrometheus, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if prometheus.popen.poll() is not None:
            raise RuntimeError(f"prometheus exited with {prometheus.popen.returncode}:\n{_tail(prometheus.log_file)}")
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"prometheus not ready after {timeout_s:.0f}s:\n{_tail(prometheus.log_file)}")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
