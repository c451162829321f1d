"""A role's ledger on local disk: SQLite in WAL mode, through the standard
library, embedded (nothing to install or start).

Everything a role decides that changes its state is written here before the
RPC that caused it is acknowledged: counted events (`counts`), the first
verdict per impression key (`journal`), keys taken for idempotence (`keys`),
notices owed to other roles (`outbox`) and spend accruals (`accruals`).
Idempotence by key is the store's primary key, not a set in memory.

**Group commit.** A role writes from its one event loop thread; writes join
an open transaction and `commit()` ends it. The interceptor waits for
`commit_soon()` after every handler, before the response leaves, so an
acknowledged RPC is on disk; a batch RPC of a thousand events is one commit,
and the handlers the loop runs in one pass share one commit. What other roles or users see of a role's
counts (GetCounts, metrics, notices) moves only on commit: `on_commit`
callbacks run after the transaction is durable.

**Failure.** A write the disk refuses (read-only, full, I/O error) rolls the
transaction back and the store goes *failed*: the role answers UNAVAILABLE,
its health goes NOT_SERVING, and a probe retries until a write succeeds; then
the role rebuilds its memory from the ledger (the start-up path) and serves
again. Each failure bumps `generation`, so a handler whose writes were rolled
back under it can never acknowledge them later.

**Durability.** `synchronous = "normal"` (the default): a committed
transaction survives the process being killed (it is in the WAL, which the
operating system holds); after a power loss the ledger is consistent but may
miss the last transactions. `"full"` syncs the WAL to the device on every
commit and survives power loss too, at the price of one fsync per commit.
A torn last write (a transaction being appended when the process died) is
not part of the ledger: SQLite recovers to the last complete commit.

Keys that sort by time (the exchange's auction ids, the DSP's bid ids) keep
the B-trees' inserts at their right edge, so a commit writes a few pages
instead of one per key.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from services.runtime.config import LEDGER_SYNCHRONOUS
from services.runtime.errors import RequestError

log = logging.getLogger(__name__)

# The page cache per connection, in KiB (SQLite's negative cache_size): the
# ledger's memory stays this size however many events it holds. Inserts land
# at the right edge of each index (keys sort by time) and lookups are of
# recent keys, so a small cache holds what is used.
CACHE_KIB = 8 * 1024

# How much a failed ledger's probe writes before it is trusted again.
PROBE_BYTES = 1 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    name TEXT NOT NULL, reason TEXT NOT NULL, campaign TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (name, reason, campaign)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (
    key TEXT PRIMARY KEY, outcome TEXT NOT NULL, reason TEXT NOT NULL, campaign TEXT NOT NULL,
    seat TEXT NOT NULL, at_ms INTEGER NOT NULL, viewer TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    space TEXT NOT NULL, key TEXT NOT NULL, expires_at REAL NOT NULL, text TEXT, number INTEGER,
    PRIMARY KEY (space, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, peer TEXT NOT NULL, kind TEXT NOT NULL, payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accruals (
    id INTEGER PRIMARY KEY, at_s REAL NOT NULL, campaigns TEXT NOT NULL, campaign BLOB NOT NULL,
    cost_micros BLOB NOT NULL, kind BLOB NOT NULL, user_key_hash BLOB NOT NULL);
"""


class LedgerUnavailable(RequestError):
    """The ledger cannot take writes: nothing is acknowledged until it can."""

    code = grpc.StatusCode.UNAVAILABLE


class LedgerStore:
    """One role's ledger file. Written from the role's loop thread; read
    from anywhere through `reader()` connections (WAL readers never block
    the writer)."""

    def __init__(self, path: str | Path, *, synchronous: str = "normal", clock: Callable[[], float] = time.time):
        if synchronous not in LEDGER_SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {LEDGER_SYNCHRONOUS}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._clock = clock
        self._lock = threading.RLock()
        self._db = self._connect()
        self._db.executescript(SCHEMA)
        self._in_transaction = False
        self._flushers: list[Callable[[sqlite3.Connection], None]] = []
        self._after: list[Callable[[], None]] = []
        self._group: asyncio.Future | None = None
        self.generation = 0
        self.failure: str | None = None
        self._on_failure: list[Callable[[str], None]] = []

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return db

    # -- writing -------------------------------------------------------------------------
    durable = True  # (a role without a ledger has nothing to commit)

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def write(self) -> sqlite3.Connection:
        """The connection, inside the open transaction (begun here if none
        is). Raises LedgerUnavailable while the store is failed."""
        if self.failure is not None:
            raise LedgerUnavailable("ledger", self.failure)
        if not self._in_transaction:
            try:
                self._db.execute("BEGIN")
            except sqlite3.Error as error:
                self._fail(error)
            self._in_transaction = True
        return self._db

    def execute(self, sql: str, params=()) -> sqlite3.Cursor:
        """One statement in the open transaction; a refused write fails the store."""
        db = self.write()
        try:
            return db.execute(sql, params)
        except sqlite3.Error as error:
            self._fail(error)

    def executemany(self, sql: str, rows) -> None:
        db = self.write()
        try:
            db.executemany(sql, rows)
        except sqlite3.Error as error:
            self._fail(error)

    def add_flusher(self, flush: Callable[[sqlite3.Connection], None]) -> None:
        """`flush(connection)` writes what a component holds back until
        commit (a tally's deltas), inside the transaction being committed."""
        self._flushers.append(flush)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` after the next commit, once what was written before
        it is durable (dropped if that commit fails)."""
        self._after.append(callback)

    def commit(self) -> None:
        """Make everything written so far durable, then run the on-commit
        callbacks. Raises LedgerUnavailable (after rolling back) if the disk
        refuses it."""
        if self.failure is not None:
            raise LedgerUnavailable("ledger", self.failure)
        with self._lock:
            if self._flushers:
                for flush in self._flushers:
                    flush(self)
            if self._in_transaction:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as error:
                    self._fail(error)
                self._in_transaction = False
            after, self._after = self._after, []
        for callback in after:
            callback()

    def commit_soon(self) -> asyncio.Future:
        """Group commit: a future that is done once everything written so far
        is durable (or raises LedgerUnavailable). The commit runs once, after
        the handlers the loop is running now, for every caller that asked
        before it ran: under load one commit acknowledges many calls."""
        group = self._group
        if group is None:
            loop = asyncio.get_running_loop()
            group = self._group = loop.create_future()
            loop.call_soon(self._commit_group)
        return group

    def _commit_group(self) -> None:
        group, self._group = self._group, None
        try:
            self.commit()
        except LedgerUnavailable as error:
            group.set_exception(error)
            group.exception()  # every waiter re-raises it; none left means nothing unretrieved
        else:
            group.set_result(None)

    def _fail(self, error: sqlite3.Error) -> None:
        """Roll back and go failed: nothing written since the last commit is
        acknowledged, and nothing is until the ledger takes writes again."""
        message = f"the ledger at {self.path} cannot be written ({error}); nothing is acknowledged until it can"
        log.error("%s", message)
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rolling back the ledger failed")
        self._in_transaction = False
        self._after = []
        self.generation += 1
        self.failure = message
        for callback in self._on_failure:
            callback(message)
        raise LedgerUnavailable("ledger", message) from error

    def on_failure(self, callback: Callable[[str], None]) -> None:
        self._on_failure.append(callback)

    def probe(self) -> bool:
        """Try one write (a failed store's way back): True, and the store
        serves again, when the disk took it. The write is PROBE_BYTES, not a
        byte: a disk with room for a row but not for a batch is still full.
        The caller rebuilds its memory from the ledger before serving."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("CREATE TABLE IF NOT EXISTS probe (payload BLOB)")
            self._db.execute("INSERT INTO probe VALUES (zeroblob(?))", (PROBE_BYTES,))
            self._db.execute("DELETE FROM probe")
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            log.debug("ledger probe failed: %s", error)
            return False
        self.failure = None
        return True

    def describe(self, role: str, instance: str) -> None:
        """Say whose ledger this is, for readers of the file alone (offline audit)."""
        self.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("role", role), ("instance", instance)])
        self.commit()

    # -- reading -------------------------------------------------------------------------
    def query(self, sql: str, params=()) -> list[tuple]:
        """Rows from the writer's connection (sees its own open transaction)."""
        return self._db.execute(sql, params).fetchall()

    def query_one(self, sql: str, params=()):
        return self._db.execute(sql, params).fetchone()

    def reader(self) -> sqlite3.Connection:
        """A read-only connection of its own, for reading a snapshot while
        the role goes on writing (ListImpressions, reconciliation)."""
        return open_read_only(self.path)

    def close(self) -> None:
        with self._lock:
            if self.failure is None and (self._in_transaction or self._flushers):
                try:
                    self.commit()
                except LedgerUnavailable:
                    pass
            self._db.close()


def open_read_only(path: str | Path) -> sqlite3.Connection:
    """A ledger file opened for reading only, by a reader without its role
    (offline audit); works while the role is writing it, or stopped."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, isolation_level=None)
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB // 4}")
    return db


def scan(db: sqlite3.Connection, table: str, columns: str, key: str, size: int,
         where: str = "", params: tuple = ()) -> Iterator[list[tuple]]:
    """Every row of `table` in `key` order, `size` rows per page, each page
    its own query (keyset pagination): a reader never holds a table in
    memory nor one long read open across pages."""
    condition = f" AND {where}" if where else ""
    last = None
    while True:
        if last is None:
            rows = db.execute(f"SELECT {columns} FROM {table} WHERE 1{condition} ORDER BY {key} LIMIT ?",
                              (*params, size)).fetchall()
        else:
            rows = db.execute(f"SELECT {columns} FROM {table} WHERE {key} > ?{condition} ORDER BY {key} LIMIT ?",
                              (last, *params, size)).fetchall()
        if not rows:
            return
        yield rows
        if len(rows) < size:
            return
        last = rows[-1][0]
