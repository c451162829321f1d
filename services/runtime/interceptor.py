"""One server interceptor for every role: request metrics, and the mapping of
request errors (and unexpected failures) to gRPC status, so servicers never
repeat it."""

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

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        behaviour = handler.unary_unary
        metrics = self._metrics

        def serve(request, context: grpc.ServicerContext):
            started = time.perf_counter()
            code = "OK"
            try:
                return behaviour(request, context)
            except RequestError as error:
                code = error.code.name
                context.abort_with_status(error.to_status())
            except Exception as error:
                # abort() raises a bare Exception after setting the status.
                if getattr(context, "_state", None) is not None and context._state.aborted:
                    code = context._state.code.name if context._state.code else "UNKNOWN"
                    raise
                code = "INTERNAL"
                log.exception("%s failed", method)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
            finally:
                metrics.observe(method, code, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            serve,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
