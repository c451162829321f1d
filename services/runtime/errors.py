"""Request errors and their one mapping to gRPC status.

Servicers and role logic raise `RequestError` naming the offending field; the
runtime's interceptor turns it into the status code, a message that starts
with the field, and a google.rpc.BadRequest detail a client can read. Logic
raises before it counts, so a rejected request changes no count.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class RequestError(Exception):
    """A request the role will not serve, with the field at fault."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def to_status(self) -> grpc.Status:
        violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status = status_pb2.Status(code=_RPC_CODES[self.code], message=str(self), details=[detail])
        return rpc_status.to_status(status)


class InvalidArgument(RequestError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RequestError):
    """The request names something the role does not know (a token's
    impression, a campaign, a DSP)."""

    code = grpc.StatusCode.NOT_FOUND


class DeadlineExceeded(RequestError):
    """The caller's own deadline, carried in the request, passed before the
    answer was ready: the work it started is done and counted as such (an
    auction that ran, its ad not returned)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def require(condition: bool, field: str, message: str) -> None:
    """Raise InvalidArgument(field, message) unless `condition` holds."""
    if not condition:
        raise InvalidArgument(field, message)


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """The BadRequest field violations a failed call carried, field -> text."""
    status = rpc_status.from_call(error)
    found: dict[str, str] = {}
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update((v.field, v.description) for v in bad.field_violations)
    return found


_RPC_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
}
