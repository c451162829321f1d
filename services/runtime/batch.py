"""Per-item semantics for the batch RPCs, in one place.

A batch RPC answers results[i] for items[i]. An item the role refuses gets
its own status naming the field as items[i].<field>, exactly the status its
unary RPC would have answered with; it never fails the batch and, because
role logic raises before it counts, it never changes a count. Items are
judged in order, so the same key twice in one batch counts once: the second
is a duplicate, as it would be in two unary calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import code_pb2

from adchain.v1 import batch_pb2
from services.runtime.errors import RequestError

log = logging.getLogger(__name__)

Item = TypeVar("Item")

OK = batch_pb2.ItemStatus()

_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
}


def item_field(prefix: str, field: str) -> str:
    """`items[3]` + `token` -> `items[3].token`; an empty field names the item."""
    if not field:
        return prefix
    return f"{prefix}{field}" if field.startswith("[") else f"{prefix}.{field}"


def refused(error: RequestError, prefix: str) -> batch_pb2.ItemStatus:
    """The status of an item the role refused, its field under `prefix`."""
    return batch_pb2.ItemStatus(code=_CODES.get(error.code, code_pb2.INVALID_ARGUMENT),
                                field=item_field(prefix, error.field), message=error.message)


def failed(prefix: str) -> batch_pb2.ItemStatus:
    return batch_pb2.ItemStatus(code=code_pb2.INTERNAL, field=prefix, message="internal error")


def answer_each(items: Sequence[Item], handle: Callable[[Item], Any], add_result: Callable[..., Any],
                prefix: str = "items") -> None:
    """`add_result(status=..., response=handle(item))` for every item, in
    order; a RequestError becomes that item's status, anything unexpected an
    INTERNAL status (logged), and the next item is judged all the same.
    `add_result` is a batch response's `results.add`: each result is made
    where it stays (a list of results handed to the response's constructor
    would be copied into it)."""
    for i, item in enumerate(items):
        try:
            response = handle(item)
        except RequestError as error:
            add_result(status=refused(error, f"{prefix}[{i}]"))
            continue
        except Exception:
            log.exception("%s[%d] failed", prefix, i)
            add_result(status=failed(f"{prefix}[{i}]"))
            continue
        add_result(status=OK, response=response)


def status_counts(results: Sequence[Any]) -> dict[str, int]:
    """Results by google.rpc.Code name, for the items metric."""
    counts: dict[str, int] = {}
    for result in results:
        name = code_pb2.Code.Name(result.status.code)
        counts[name] = counts.get(name, 0) + 1
    return counts
