"""One wrapper around every RPC handler of a role, for every RPC kind (unary,
server streaming, client streaming, bidi): request metrics, per-item metrics
of the batch and stream RPCs, and the mapping of request errors (and
unexpected failures) to gRPC status, so servicers never repeat it.

The wrapping happens once, when a servicer is added to the server
(`WrappingRegistrar` stands in for the server in the generated
`add_*Servicer_to_server` functions), so a call pays for no interceptor
lookup. A servicer method may be a coroutine (or an async generator) when it
waits, or a plain function (or generator) when it only computes; either way
the wrapped handler is a coroutine run on the server's event loop, and a
plain function runs inline on it: it must not block.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import grpc

from services.runtime.errors import RequestError
from services.runtime.metrics import RpcMetrics
from services.runtime.store import LedgerStore, LedgerUnavailable

log = logging.getLogger(__name__)


class WrappingRegistrar:
    """What the generated `add_*Servicer_to_server(servicer, server)` is handed
    instead of the server: it registers every method's handler wrapped."""

    def __init__(self, server: grpc.aio.Server, metrics: RpcMetrics, store: LedgerStore | None = None):
        self._server = server
        self._metrics = metrics
        self._store = store

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        # The same handlers arrive through add_registered_method_handlers,
        # which grpc consults first; only those are registered (wrapped).
        return None

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        wrapped = {name: wrap(name, handler, self._metrics, self._store) for name, handler in method_handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, wrapped),))
        self._server.add_registered_method_handlers(service_name, wrapped)


def wrap(method: str, handler: grpc.RpcMethodHandler, metrics: RpcMetrics,
         store: LedgerStore | None = None) -> grpc.RpcMethodHandler:
    """`handler` with metrics and error mapping, as a coroutine handler; with
    a ledger, what the handler wrote is committed before its response (or
    each message of a streamed one) leaves."""
    if handler.unary_unary is not None:
        behaviour, wrapper, kind = handler.unary_unary, _unary_response, grpc.unary_unary_rpc_method_handler
    elif handler.stream_unary is not None:
        behaviour, wrapper, kind = handler.stream_unary, _unary_response, grpc.stream_unary_rpc_method_handler
    elif handler.unary_stream is not None:
        behaviour, wrapper, kind = handler.unary_stream, _streamed_response, grpc.unary_stream_rpc_method_handler
    else:
        behaviour, wrapper, kind = handler.stream_stream, _streamed_response, grpc.stream_stream_rpc_method_handler
    return kind(wrapper(method, behaviour, metrics, store or _NoStore()),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class _NoStore:
    """A role without a ledger: nothing to commit."""

    generation = 0
    failed = False
    durable = False


async def _acknowledge(store: LedgerStore | _NoStore, generation: int) -> None:
    """Before a response leaves: what the handler wrote is committed (with
    whatever else the loop's handlers wrote meanwhile: one group commit). A
    failure since the handler began rolled back writes it made, so it
    acknowledges nothing."""
    if store.generation != generation:
        raise LedgerUnavailable("ledger", "the ledger failed while this call was being served; nothing of it "
                                          "was recorded")
    if store.durable:
        await store.commit_soon()


def _unary_response(method: str, behaviour, metrics: RpcMetrics, store: LedgerStore | _NoStore):
    batch = metrics.is_batch(method)
    waits = inspect.iscoroutinefunction(behaviour)

    async def serve(request, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        code = "OK"
        generation = store.generation
        try:
            if store.failed:
                raise LedgerUnavailable("ledger", store.failure)
            response = (await behaviour(request, context)) if waits else behaviour(request, context)
            await _acknowledge(store, generation)
            if batch:  # count the batch's items by their own status
                metrics.observe_items(method, response.results)
            return response
        except asyncio.CancelledError:  # the caller went away (or its deadline passed)
            code = "CANCELLED"
            raise
        except Exception as error:
            code = _code_of(method, context, error)
            await _abort(method, context, error)
        finally:
            metrics.observe(method, code, time.perf_counter() - started)

    return serve


def _streamed_response(method: str, behaviour, metrics: RpcMetrics, store: LedgerStore | _NoStore):
    batch = metrics.is_batch(method)
    streams_async = inspect.isasyncgenfunction(behaviour)

    async def serve(request, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        code = "OK"
        generation = store.generation
        try:
            if store.failed:
                raise LedgerUnavailable("ledger", store.failure)
            if streams_async:
                async for response in behaviour(request, context):
                    await _acknowledge(store, generation)
                    if batch:  # a stream message's answers, each with its own status
                        metrics.observe_items(method, response.results)
                    yield response
            else:
                for response in behaviour(request, context):
                    await _acknowledge(store, generation)
                    yield response
        except (asyncio.CancelledError, GeneratorExit):  # the caller went away mid-stream
            code = "CANCELLED"
            raise
        except Exception as error:
            code = _code_of(method, context, error)
            await _abort(method, context, error)
        finally:
            metrics.observe(method, code, time.perf_counter() - started)

    return serve


def _code_of(method: str, context: grpc.aio.ServicerContext, error: Exception) -> str:
    """The status code a call that raised `error` ends with (for the
    metrics); an unexpected failure is logged."""
    if isinstance(error, RequestError):
        return error.code.name
    if isinstance(error, grpc.aio.AbortError):  # the servicer aborted it itself
        code = context.code()
        return code.name if code is not None else "UNKNOWN"
    log.exception("%s failed", method)
    return "INTERNAL"


async def _abort(method: str, context: grpc.aio.ServicerContext, error: Exception) -> None:
    """End the call with `error`'s status: a RequestError's field and code, an
    abort the servicer already made, or INTERNAL. Always raises."""
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if isinstance(error, RequestError):
        await context.abort_with_status(error.to_status())
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
