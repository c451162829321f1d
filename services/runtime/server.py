"""Serving a role: build the gRPC server with health and reflection, expose
/metrics, report readiness, and shut down gracefully on SIGTERM.

Every role is served by grpc.aio on one event loop, in a thread of its own
(`RunningRole.loop`): no worker pool, no thread per call or per stream. An
RPC handler is a coroutine when it waits (the exchange for its bids, the DSP
for its modelled response delay) and a plain function when it only computes
(a count, a batch of notices); plain functions run inline on the loop, so
they must never block (services/runtime/interceptor.py wraps both kinds).

A role is described by a `Role`: its name, its settings class and a `build`
function that turns settings into a `RoleApp` (its servicers and any
background work). Nothing here knows what a DSP or an exchange is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from services.runtime.config import ServerSettings
from services.runtime.interceptor import WrappingRegistrar
from services.runtime.metrics import RpcMetrics
from services.runtime.store import LedgerStore, LedgerUnavailable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Servicer:
    """One gRPC service a role serves."""

    add_to_server: Callable[[Any, grpc.Server], None]
    implementation: Any
    # Fully qualified service name, e.g. "adchain.v1.BidderService".
    full_name: str
    # Its RPC method names, for metrics created at zero.
    methods: tuple[str, ...]
    # Those of its methods that answer per item (batch and stream RPCs).
    batch_methods: tuple[str, ...] = ()


class RoleApp(Protocol):
    servicers: Sequence[Servicer]

    def start(self) -> None:
        """Start background work once serving (on the role's loop)."""

    def close(self, timeout_s: float) -> None:
        """Flush and stop background work (notices still batching or waiting
        to retry) after the server stopped (on the role's loop; may be a
        coroutine)."""


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    settings_type: type
    build: Callable[[Any, "RoleContext"], RoleApp]


@dataclasses.dataclass(frozen=True)
class RoleContext:
    """What a role's logic is handed: no module globals."""

    instance: str
    registry: CollectorRegistry
    clock: Callable[[], float] = time.time
    # The role's ledger on disk; None runs the role in memory (counts die with the process).
    store: LedgerStore | None = None


@dataclasses.dataclass
class RunningRole:
    """A role serving on bound ports; `stop` shuts it down gracefully."""

    role: str
    app: RoleApp
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    grpc_address: str
    metrics_address: str
    loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _metrics_server: Any
    _grace_s: float
    store: LedgerStore | None = None
    _tasks: tuple = ()

    def stop(self, grace_s: float | None = None) -> None:
        grace = self._grace_s if grace_s is None else grace_s
        log.info("%s: stopping: health NOT_SERVING, draining in-flight RPCs for up to %.1fs", self.role, grace)
        try:
            asyncio.run_coroutine_threadsafe(self._stop(grace), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        log.info("%s: stopped", self.role)

    async def _stop(self, grace: float) -> None:
        # Tell load balancers and `adchain up` first, then stop accepting.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        closed = self.app.close(timeout_s=max(grace, 1.0))
        if inspect.isawaitable(closed):
            await closed
        for task in self._tasks:
            task.cancel()
        if self.store is not None:
            self.store.close()


def start(role: Role, settings: Any, *, registry: CollectorRegistry | None = None,
          clock: Callable[[], float] = time.time, started: float | None = None) -> RunningRole:
    """Build and start `role` with `settings` (whose `.server` is a
    ServerSettings) on a new event loop thread. Returns once both ports are
    bound. `started` is the perf_counter() reading the start-up time is logged
    from (default: now)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"{role.name}-loop", daemon=True)
    thread.start()
    try:
        return asyncio.run_coroutine_threadsafe(
            _start(role, settings, registry, clock, started, loop, thread), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        raise


async def _start(role: Role, settings: Any, registry: CollectorRegistry | None, clock: Callable[[], float],
                 started: float | None, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> RunningRole:
    server_settings: ServerSettings = settings.server
    registry = registry if registry is not None else CollectorRegistry()
    instance = server_settings.name or role.name
    started = time.perf_counter() if started is None else started
    store = _open_store(getattr(settings, "ledger", None), clock)
    if store is not None:
        store.describe(role.name, instance)
    # Built on the loop: the clients a role opens (aio channels) belong to it.
    app = role.build(settings, RoleContext(instance=instance, registry=registry, clock=clock, store=store))

    methods = tuple(m for s in app.servicers for m in s.methods)
    batch_methods = tuple(m for s in app.servicers for m in s.batch_methods)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)],
                             maximum_concurrent_rpcs=server_settings.max_concurrent_rpcs or None)
    registrar = WrappingRegistrar(server, RpcMetrics(role.name, methods, registry, batch_methods), store)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for servicer in app.servicers:
        servicer.add_to_server(servicer.implementation, registrar)
    names = [s.full_name for s in app.servicers]
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{server_settings.host}:{server_settings.grpc_port}")
    if port == 0:
        raise OSError(f"could not bind gRPC on {server_settings.host}:{server_settings.grpc_port}")
    metrics_server, _thread = start_http_server(server_settings.metrics_port, addr=server_settings.host, registry=registry)
    metrics_port = metrics_server.server_port
    await server.start()
    app.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    tasks = ()
    if store is not None:
        tasks = (asyncio.create_task(_commit_regularly(store)),)
        store.on_failure(lambda _message: _on_ledger_failure(store, app, health_servicer, names))
    running = RunningRole(
        role=role.name,
        app=app,
        server=server,
        health=health_servicer,
        grpc_address=f"{_host_for_url(server_settings.host)}:{port}",
        metrics_address=f"{_host_for_url(server_settings.host)}:{metrics_port}",
        loop=loop,
        _thread=thread,
        _metrics_server=metrics_server,
        _grace_s=server_settings.grace_s,
        store=store,
        _tasks=tasks,
    )
    log.info("%s (%s): serving gRPC on %s, metrics on http://%s/metrics, import to ready %.2fs",
             instance, role.name, running.grpc_address, running.metrics_address, time.perf_counter() - started)
    return running


# How often writes made outside any RPC (notice outcomes, timers) are committed.
COMMIT_INTERVAL_S = 0.05
# How often a failed ledger is tried again.
PROBE_INTERVAL_S = 1.0


def _open_store(ledger: Any, clock: Callable[[], float]) -> LedgerStore | None:
    if ledger is None or not ledger.path:
        return None
    started = time.perf_counter()
    store = LedgerStore(ledger.path, synchronous=ledger.synchronous, clock=clock)
    log.info("ledger %s open (synchronous=%s) in %.2fs", ledger.path, ledger.synchronous,
             time.perf_counter() - started)
    return store


async def _commit_regularly(store: LedgerStore) -> None:
    while True:
        await asyncio.sleep(COMMIT_INTERVAL_S)
        if not store.failed:
            try:
                store.commit()
            except LedgerUnavailable:
                pass  # the store went failed; the probe takes over


def _on_ledger_failure(store: LedgerStore, app: RoleApp, health_servicer: health.aio.HealthServicer,
                     names: Sequence[str]) -> None:
    """The ledger refused a write: NOT_SERVING until a probe write succeeds,
    then rebuild the role's memory from the ledger and serve again."""
    asyncio.get_running_loop().create_task(_recover(store, app, health_servicer, names))


async def _recover(store: LedgerStore, app: RoleApp, health_servicer: health.aio.HealthServicer,
                   names: Sequence[str]) -> None:
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    while not store.probe():
        await asyncio.sleep(PROBE_INTERVAL_S)
    reload = getattr(app, "reload", None)
    if reload is not None:
        reload()
    log.warning("ledger %s takes writes again: memory rebuilt from it, serving", store.path)
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def serve(role: Role, settings: Any, ready_file: Path | None = None, started: float | None = None) -> None:
    """Run a role until SIGTERM or SIGINT, then shut down gracefully."""
    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop_requested.set())
    running = start(role, settings, started=started)
    # What start-up made (modules, compiled kernels, settings) lives as long
    # as the process: out of the collector's sight, a full collection scans
    # only what serving allocates, and its pauses stay short.
    gc.collect()
    gc.freeze()
    if ready_file is not None:
        write_ready_file(ready_file, running)
    stop_requested.wait()
    running.stop()


def write_ready_file(path: Path, running: RunningRole) -> None:
    """Write the bound addresses as JSON, atomically, for whoever launched us."""
    payload = {"grpc": running.grpc_address, "metrics": running.metrics_address, "pid": os.getpid()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
