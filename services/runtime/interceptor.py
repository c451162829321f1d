"""One server interceptor for every role and every RPC kind (unary, server
streaming, client streaming, bidi): request metrics, per-item metrics of the
batch RPCs, and the mapping of request errors (and unexpected failures) to
gRPC status, so servicers never repeat it."""

from __future__ import annotations

import logging
import time

import grpc

from services.runtime.errors import RequestError
from services.runtime.metrics import RpcMetrics

log = logging.getLogger(__name__)


class ServingInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics):
        self._metrics = metrics
        # grpcio asks the interceptor for every call: wrap each method's handler once.
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def intercept_service(self, continuation, handler_call_details):
        wrapped = self._wrapped.get(handler_call_details.method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[handler_call_details.method] = self._wrap(handler_call_details.method, handler)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = full_method.rsplit("/", 1)[-1]
        metrics = self._metrics
        if handler.unary_unary is not None:
            behaviour, wrap, kind = handler.unary_unary, _unary_response, grpc.unary_unary_rpc_method_handler
        elif handler.stream_unary is not None:
            behaviour, wrap, kind = handler.stream_unary, _unary_response, grpc.stream_unary_rpc_method_handler
        elif handler.unary_stream is not None:
            behaviour, wrap, kind = handler.unary_stream, _streamed_response, grpc.unary_stream_rpc_method_handler
        else:
            behaviour, wrap, kind = handler.stream_stream, _streamed_response, grpc.stream_stream_rpc_method_handler
        return kind(wrap(method, behaviour, metrics),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


def _unary_response(method: str, behaviour, metrics: RpcMetrics):
    batch = metrics.is_batch(method)

    def serve(request, context: grpc.ServicerContext):
        started = time.perf_counter()
        code = "OK"
        try:
            response = behaviour(request, context)
            if batch:  # count the batch's items by their own status
                metrics.observe_items(method, response.results)
            return response
        except Exception as error:
            code = _code_of(method, context, error)
            _abort(method, context, error)
        finally:
            metrics.observe(method, code, time.perf_counter() - started)

    return serve


def _streamed_response(method: str, behaviour, metrics: RpcMetrics):
    batch = metrics.is_batch(method)

    def serve(request, context: grpc.ServicerContext):
        started = time.perf_counter()
        code = "OK"
        try:
            for response in behaviour(request, context):
                if batch:
                    metrics.observe_items(method, (response,))  # a stream item with its own status
                yield response
        except GeneratorExit:  # the caller went away mid-stream
            code = "CANCELLED"
            raise
        except Exception as error:
            code = _code_of(method, context, error)
            _abort(method, context, error)
        finally:
            metrics.observe(method, code, time.perf_counter() - started)

    return serve


def _code_of(method: str, context: grpc.ServicerContext, error: Exception) -> str:
    """The status code a call that raised `error` ends with (for the
    metrics); an unexpected failure is logged."""
    if isinstance(error, RequestError):
        return error.code.name
    state = getattr(context, "_state", None)
    if state is not None and state.aborted:  # the servicer aborted it itself
        return state.code.name if state.code else "UNKNOWN"
    log.exception("%s failed", method)
    return "INTERNAL"


def _abort(method: str, context: grpc.ServicerContext, error: Exception) -> None:
    """End the call with `error`'s status: a RequestError's field and code, an
    abort the servicer already made, or INTERNAL. Always raises (abort()
    raises a bare Exception after setting the status)."""
    if isinstance(error, RequestError):
        context.abort_with_status(error.to_status())
    state = getattr(context, "_state", None)
    if state is None or not state.aborted:
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
    raise error
