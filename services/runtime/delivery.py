"""Knowing that a unary response reached the caller.

The exchange counts an impression on ad return, and only when the return to
the caller succeeds: a caller whose deadline passed, or who hung up, never got
the ad. gRPC's server reports the end of every call (RECV_CLOSE_ON_SERVER,
with a `cancelled` flag set when the status did not get through); grpcio's
sync server keeps that verdict on the call's state and runs the context's
callbacks right after it. `on_delivered` reads it there.

grpcio exposes no public accessor for that verdict, so this module is the one
place that reads it; tests/runtime/test_delivery.py pins the behaviour (a
response to a caller whose deadline passed is not delivered) so an upgrade
that changes it fails loudly. Where the verdict cannot be read, a call whose
deadline had passed when it ended is treated as not delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

log = logging.getLogger(__name__)

_CANCELLED = "cancelled"


def on_delivered(context: grpc.ServicerContext, delivered: Callable[[], None], lost: Callable[[], None] | None = None) -> None:
    """Run `delivered` once the call ends with its response received by the
    caller, else `lost` (if given). Callbacks run on gRPC's completion thread:
    keep them short."""

    def finished() -> None:
        try:
            ok = _was_delivered(context)
        except Exception:  # never let accounting break the server thread
            log.exception("could not read the delivery verdict of a call")
            ok = False
        (delivered if ok else (lost or _nothing))()

    if not context.add_callback(finished):
        # The call already ended (cancelled before we got here).
        if lost is not None:
            lost()


def _was_delivered(context: grpc.ServicerContext) -> bool:
    state = getattr(context, "_state", None)
    client = getattr(state, "client", None)
    if client is not None:
        return client != _CANCELLED and getattr(state, "code", None) in (None, grpc.StatusCode.OK)
    remaining = context.time_remaining()
    return remaining is None or remaining > 0


def _nothing() -> None:
    return None
