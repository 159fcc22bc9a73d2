"""The crash-safe result store of a sweep (SQLite, WAL) and the identity of a cell.

One row per cell, keyed by ``cell_key`` = sha256 of (target, canonical-JSON params, seed, code version,
checkpoint versions). Every finished cell is written at once in its own transaction with
``INSERT ... ON CONFLICT(key) DO UPDATE ... WHERE status != 'done'``: a done row is never touched again,
a failed row is replaced only when the cell is retried, and a key can never appear twice. A killed
sweep therefore loses only the cells that were still running; re-running it skips the done keys.

The sweep client is the only writer (workers return results to it). ``journal_mode=WAL`` lets
``rdc report`` / ``--status`` read while the sweep writes; ``synchronous=NORMAL`` in WAL mode never
corrupts the file and loses at most the last commits on an OS crash or power loss (a killed process
loses nothing that was committed). WAL needs every process on one host: keep the file on a local
disk, not on a network file system (on Slurm: next to the client, not on the workers).

A store that is not an rdc store, fails SQLite's ``quick_check`` or holds a row that does not read back
raises ``StoredStateError`` naming it; ``rdc sweep --restart-store`` (``run_sweep(restart_store=True)``)
moves it aside with its -wal/-shm files and starts a fresh one.

Code version: ``<package version>+src.<hash>`` where the hash covers the ``rdc_lib`` Python sources and the
target's own source (the notebook's code cells, or the module file of a ``module:callable`` target).
Content hashes rather than the git commit, so a commit that does not touch the code keeps done cells.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.paths import data_dir
from ..core.stored_state import StoredStateError, restart_aside, sources_version
from ..evaluation import runner
from ..evaluation.provenance import file_sha256  # one home: rdc_lib.evaluation.provenance (re-exported here)
from .spec import SweepSpec
from .targets import EVAL_TARGET

__all__ = [
    "CellRecord",
    "PlannedCell",
    "ResultStore",
    "cell_key",
    "checkpoint_versions",
    "code_version",
    "file_sha256",
    "plan_cells",
    "utc_now",
]

SCHEMA_VERSION = "1"
RESTART = "--restart-store (rdc sweep; restart_store=True in run_sweep())"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".pkl")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    target TEXT NOT NULL,
    params TEXT NOT NULL,              -- canonical JSON, seed included
    seed INTEGER,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    result TEXT,                       -- JSON returned by the target (done)
    error TEXT,                        -- error text / traceback (failed)
    notebook TEXT,                     -- executed notebook (notebook targets)
    code_version TEXT NOT NULL,
    checkpoints TEXT NOT NULL,         -- JSON {file name: sha256}
    worker TEXT,
    started TEXT,                      -- ISO 8601 UTC; NULL when the worker died before reporting
    finished TEXT NOT NULL,
    duration REAL,                     -- seconds
    attempts INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_UPSERT = """
INSERT INTO cells (key, sweep, target, params, seed, status, result, error, notebook, code_version,
                   checkpoints, worker, started, finished, duration)
VALUES (:key, :sweep, :target, :params, :seed, :status, :result, :error, :notebook, :code_version,
        :checkpoints, :worker, :started, :finished, :duration)
ON CONFLICT(key) DO UPDATE SET
    status = excluded.status, result = excluded.result, error = excluded.error, notebook = excluded.notebook,
    worker = excluded.worker, started = excluded.started, finished = excluded.finished,
    duration = excluded.duration, attempts = cells.attempts + 1
WHERE cells.status != 'done'
"""


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds (the store's timestamp format)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON: the same params always give the same text (and the same key)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# --------------------------------------------------------------------------- identity


def _notebook_source(path: Path) -> bytes:
    """The code cells' sources only: re-saving outputs or metadata does not change the version."""
    import nbformat  # heavy (nbformat, ~2 s): only notebook targets need it

    nb = nbformat.read(str(path), as_version=4)
    return "\n\0".join(c.source for c in nb.cells if c.cell_type == "code").encode()


def code_version(spec: SweepSpec | None = None, *, package_root: Path | None = None) -> str:
    """``<rdc version>+src.<12 hex>`` over the rdc_lib sources and the spec's target source."""
    root = package_root or Path(__file__).resolve().parents[1]
    extra = b""
    if spec is not None and spec.target_kind == "notebook":
        extra = b"notebook\0" + _notebook_source(Path(spec.target))
    elif spec is not None and spec.target != EVAL_TARGET:
        module_spec = importlib.util.find_spec(spec.target.partition(":")[0])
        origin = Path(module_spec.origin) if module_spec and module_spec.origin else None
        if origin is not None and origin.is_file() and root not in origin.resolve().parents:
            extra = b"module\0" + origin.read_bytes()
    return sources_version(root, extra)


def _eval_checkpoints(params: Mapping[str, Any]) -> list[Path]:
    """Checkpoints an ``eval`` cell reads: the runner's ``checkpoint_paths(params)`` if it has one, else
    every shipped checkpoint (conservative: retraining any of them invalidates the cells)."""
    hook = getattr(runner, "checkpoint_paths", None)
    if hook is not None:
        return [Path(p) for p in hook(dict(params))]
    return sorted((data_dir() / "checkpoints").glob("*.safetensors"))


def checkpoint_versions(spec: SweepSpec, params: Mapping[str, Any]) -> dict[str, str]:
    """{file name: sha256} of the checkpoints a cell depends on: the spec's ``checkpoints`` list, string
    params naming an existing checkpoint file, and (``function: eval``) the evaluation's checkpoints."""
    paths = list(spec.checkpoints)
    for value in params.values():
        if isinstance(value, str) and value.endswith(CHECKPOINT_SUFFIXES):
            candidate = spec.base_dir / value
            if candidate.is_file():
                paths.append(candidate)
    if spec.target == EVAL_TARGET:
        paths.extend(_eval_checkpoints(params))
    return {p.name: file_sha256(p) for p in sorted(set(Path(p).resolve() for p in paths))}


def target_id(spec: SweepSpec) -> str:
    """A machine-independent name of the target (a notebook path relative to the base folder)."""
    if spec.target_kind == "notebook":
        path = Path(spec.target)
        try:
            return "notebook:" + path.relative_to(spec.base_dir.resolve()).as_posix()
        except ValueError:
            return "notebook:" + path.name
    return "function:" + spec.target


def cell_key(target: str, params: Mapping[str, Any], code: str, checkpoints: Mapping[str, str]) -> str:
    """sha256 (hex) of the cell's identity: target, params (seed included), code and checkpoint versions."""
    payload = {
        "target": target,
        "params": dict(params),
        "seed": params.get("seed"),
        "code": code,
        "checkpoints": dict(checkpoints),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass(frozen=True)
class PlannedCell:
    """One cell of a sweep: its key, params (seed included) and the checkpoint versions in its key."""

    key: str
    params: dict[str, Any]
    checkpoints: dict[str, str]
    code_version: str

    @property
    def seed(self) -> int | None:
        return self.params.get("seed")


def plan_cells(spec: SweepSpec, code: str | None = None) -> list[PlannedCell]:
    """Every cell of ``spec`` with its key; ``code`` overrides ``code_version(spec)`` (tests, pinned runs)."""
    code = code if code is not None else code_version(spec)
    tid = target_id(spec)
    out = []
    for params in spec.cells():
        ckpts = checkpoint_versions(spec, params)
        out.append(PlannedCell(cell_key(tid, params, code, ckpts), params, ckpts, code))
    return out


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class CellRecord:
    """One row of the store. ``result`` is the target's JSON dict (done), ``error`` the failure text."""

    key: str
    sweep: str
    target: str
    params: dict[str, Any]
    status: str  # "done" | "failed"
    code_version: str
    checkpoints: dict[str, str]
    finished: str
    result: dict[str, Any] | None = None
    error: str | None = None
    notebook: str | None = None
    worker: str | None = None
    started: str | None = None
    duration: float | None = None
    attempts: int = 1

    @property
    def seed(self) -> int | None:
        return self.params.get("seed")


class ResultStore:
    """SQLite store of a sweep's cells (see the module docstring). Use as a context manager."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"result store {self.path} does not exist (run the sweep first)")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = None
        try:
            if readonly:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            else:
                self._conn = sqlite3.connect(self.path, timeout=30)
                tables = self._tables()
                if tables and not {"cells", "meta"} <= tables:
                    raise self._damaged(
                        f"it is an SQLite file without the tables of an rdc sweep store (has "
                        f"{sorted(tables)}, expected cells and meta)"
                    )
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                with self._conn:
                    self._conn.executescript(_SCHEMA)
                    self._conn.execute(
                        "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                    )
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            if self._conn is not None:
                self._conn.close()
            raise self._damaged(f"it is not a readable SQLite database ({exc})") from exc
        except BaseException:
            if self._conn is not None:
                self._conn.close()
            raise

    def _tables(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _damaged(self, problem: str) -> StoredStateError:
        return StoredStateError(self.path, problem, restart=RESTART)

    def _check_schema(self) -> None:
        """The file is an rdc store of this schema and SQLite finds it intact (``PRAGMA quick_check``)."""
        try:
            tables = self._tables()
            if not {"cells", "meta"} <= tables:
                raise self._damaged(
                    f"it is an SQLite file without the tables of an rdc sweep store (has "
                    f"{sorted(tables)}, expected cells and meta)"
                )
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            problems = [r[0] for r in self._conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            raise self._damaged(f"it is not a readable SQLite database ({exc})") from exc
        if problems != ["ok"]:
            raise self._damaged(f"SQLite finds it damaged ({'; '.join(problems[:3])})")
        if row is None or row[0] != SCHEMA_VERSION:
            raise self._damaged(f"it has store schema {row and row[0]!r}, expected {SCHEMA_VERSION!r}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, rec: CellRecord) -> bool:
        """Write one finished cell in its own transaction. Returns False if the key is already done."""
        row = {
            "key": rec.key,
            "sweep": rec.sweep,
            "target": rec.target,
            "params": canonical_json(rec.params),
            "seed": rec.seed,
            "status": rec.status,
            "result": None if rec.result is None else json.dumps(rec.result, sort_keys=True),
            "error": rec.error,
            "notebook": rec.notebook,
            "code_version": rec.code_version,
            "checkpoints": canonical_json(rec.checkpoints),
            "worker": rec.worker,
            "started": rec.started,
            "finished": rec.finished,
            "duration": rec.duration,
        }
        if rec.status not in ("done", "failed"):
            raise ValueError(f"status must be 'done' or 'failed', got {rec.status!r}")
        try:
            with self._conn:  # one transaction per cell: committed (durably, in WAL) before the next result
                cur = self._conn.execute(_UPSERT, row)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(f"writing cell {rec.key[:12]} failed ({exc})") from exc
        return cur.rowcount == 1

    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """{key: status} for the given keys (all rows if None)."""
        try:
            rows = self._conn.execute("SELECT key, status FROM cells").fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(f"reading the cells failed ({exc})") from exc
        if keys is None:
            return dict(rows)
        wanted = set(keys)
        return {k: s for k, s in rows if k in wanted}

    def get(self, key: str) -> CellRecord | None:
        rows = list(self._select("WHERE key = ?", (key,)))
        return rows[0] if rows else None

    def rows(self, status: str | None = None, sweep: str | None = None) -> list[CellRecord]:
        """All rows (optionally one status / one sweep name), oldest finished first."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if sweep is not None:
            where.append("sweep = ?")
            args.append(sweep)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return list(self._select(clause + " ORDER BY finished", tuple(args)))

    def _select(self, clause: str, args: tuple) -> Iterator[CellRecord]:
        cols = (
            "key, sweep, target, params, status, code_version, checkpoints, finished, result, error, "
            "notebook, worker, started, duration, attempts"
        )
        try:
            rows = self._conn.execute(f"SELECT {cols} FROM cells {clause}", args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(f"reading the cells failed ({exc})") from exc
        for r in rows:
            try:
                yield CellRecord(
                    key=r[0],
                    sweep=r[1],
                    target=r[2],
                    params=json.loads(r[3]),
                    status=r[4],
                    code_version=r[5],
                    checkpoints=json.loads(r[6]),
                    finished=r[7],
                    result=None if r[8] is None else json.loads(r[8]),
                    error=r[9],
                    notebook=r[10],
                    worker=r[11],
                    started=r[12],
                    duration=r[13],
                    attempts=r[14],
                )
            except (TypeError, ValueError) as exc:
                raise self._damaged(f"cell {str(r[0])[:12]} holds text that is not JSON ({exc})") from exc


def store_files(path: str | Path) -> list[Path]:
    """The store and its SQLite companions (``-wal``, ``-shm``): what a restart moves aside together."""
    path = Path(path)
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def move_store_aside(path: str | Path) -> list[Path]:
    """Move the store (and its -wal/-shm files) aside, tagged damaged if it does not open or a row does not
    read back; returns the new names."""

    def check() -> None:
        with ResultStore(path, readonly=True) as store:
            store.rows()

    return restart_aside(store_files(path), check)
