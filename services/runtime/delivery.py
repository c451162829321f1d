"""Knowing that a unary response reached the caller.

The exchange counts an impression on ad return, and only when the return to
the caller succeeds: a caller whose deadline passed, or who hung up, never got
the ad. On grpc.aio, a call whose caller cancels it, or whose deadline passes,
before the handler returns is cancelled under the handler and never sends its
status; a handler that returns in time has its response and OK status put on
the wire at once, in the same step of the loop.

So the verdict is read from public API: when `on_delivered` is called (right
before the handler returns its response) the caller's deadline must not have
passed, and when the call is done its status must have been sent, and OK.
tests/runtime/test_delivery.py pins the behaviour (a response to a caller whose
deadline passed, or who hung up, is not delivered) so an upgrade that changes
it fails loudly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

log = logging.getLogger(__name__)


def on_delivered(context: grpc.aio.ServicerContext, delivered: Callable[[], None],
                 lost: Callable[[], None] | None = None) -> None:
    """Run `delivered` once the call ends with its response received by the
    caller, else `lost` (if given). Call it right before returning the
    response; the callbacks run on the server's loop: keep them short."""
    lost = lost or _nothing
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        lost()  # the caller stopped waiting before the response could leave
        return

    def finished(call: grpc.aio.ServicerContext) -> None:
        try:
            ok = call.done() and call.code() in (None, grpc.StatusCode.OK)
        except Exception:  # never let accounting break the server
            log.exception("could not read the delivery verdict of a call")
            ok = False
        (delivered if ok else lost)()

    context.add_done_callback(finished)


def _nothing() -> None:
    return None
