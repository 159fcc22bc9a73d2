"""Per-example evaluation records: a JSON-lines file and the adversarial images beside it (resumable).

In ``records_dir``, for a configuration ``cfg``:
- ``<stem>.jsonl``: line 1 the header ``{"config": cfg.identity(), "code": <code version>}``, then one
  record per evaluated example (index, label, predictions, robustness flags, l_inf / l_2 distances),
  each stamped with ``config_key`` = ``cfg.key()``;
- ``<stem>.adv.safetensors``: ``x_adv`` (n, C, H, W) float32 in [0, 1], zero rows where nothing is
  evaluated yet.
Both are rewritten atomically (temporary file + rename) after every chunk.

``load_records`` validates both against the configuration, the code version and the clean images.
Confined damage is recovered: a cut-off last line is dropped, records beyond the rows of a shortened
images file are dropped, a missing images file drops every record; the damaged files are moved aside
(``.damaged-<time>``), the intact part is written back at once and the log says how much is recomputed.
Anything else (unreadable files, a header or record of another configuration or code version, a damaged
line in the middle, a wrong shape, images that do not match their records) raises ``StoredStateError``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..core.stored_state import (
    DAMAGED,
    ORPHANED,
    StoredStateError,
    load_safetensors,
    move_aside,
    restart_aside,
    source_version,
)
from .stats import wilson

if TYPE_CHECKING:
    from .runner import EvalConfig

__all__ = ["RESTART", "load_records", "read_outcomes", "records_paths", "save_records", "summarize"]

log = logging.getLogger(__name__)

RESTART = "--restart (rdc eval; restart=True in evaluate())"
_INT_FIELDS = ("index", "label", "clean_pred")
_BOOL_FIELDS = ("robust_first", "robust_all")
_FLOAT_FIELDS = ("robust_frac", "linf", "l2")
_LINF_TOL = 1e-6  # a record's l_inf distance vs the one recomputed from the stored image


def records_paths(records_dir: str | Path, cfg: "EvalConfig") -> tuple[Path, Path]:
    """(records .jsonl, adversarial images .adv.safetensors) of ``cfg`` in ``records_dir``."""
    root = Path(records_dir)
    stem = f"{cfg.defense}_{cfg.attack}_{cfg.norm}_{cfg.eps:g}_{cfg.key()}"
    return root / f"{stem}.jsonl", root / f"{stem}.adv.safetensors"


def load_records(
    records_dir: str | Path | None, cfg: "EvalConfig", x: Tensor, y: Tensor, *, restart: bool = False
) -> tuple[dict[int, dict], Tensor]:
    """The stored records {position in the slice: record} and images (n, C, H, W) of ``cfg``.

    ``x``, ``y``: the clean images (n, C, H, W) in [0, 1] and labels (n,) of the slice (CPU), to check
    the records against. ``restart``: move the stored files aside and return nothing (start afresh).
    """
    x_adv = torch.zeros(cfg.n_images, *x.shape[1:])
    if records_dir is None:
        return {}, x_adv
    jsonl, adv = records_paths(records_dir, cfg)
    if restart:
        moved = restart_aside([jsonl, adv], lambda: _read(jsonl, adv, cfg, x, y))
        if moved:
            log.warning("restart: evaluating afresh; the stored records are kept as %s", ", ".join(map(str, moved)))
        return {}, x_adv
    records, x_adv, notes, damaged = _read(jsonl, adv, cfg, x, y)
    if damaged:
        kept = [str(move_aside(p, tag)) for p, tag in damaged if p.exists()]
        if records:
            save_records(records_dir, cfg, records, x_adv)
        log.warning(
            "%s: %s; recovered %d/%d records, the rest is recomputed (the damaged files are kept as %s)",
            jsonl,
            "; ".join(notes),
            len(records),
            cfg.n_images,
            ", ".join(kept),
        )
    elif records:
        log.info("resuming %s: %d/%d examples already evaluated", jsonl, len(records), cfg.n_images)
    return records, x_adv


def save_records(records_dir: str | Path | None, cfg: "EvalConfig", records: dict[int, dict], x_adv: Tensor) -> None:
    """Write the images, then the records, each atomically (nothing when ``records_dir`` is None)."""
    if records_dir is None:
        return
    jsonl, adv_path = records_paths(records_dir, cfg)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    tmp_adv = adv_path.with_name(adv_path.name + ".tmp")
    save_file({"x_adv": x_adv.contiguous()}, str(tmp_adv))
    tmp_adv.replace(adv_path)
    tmp = jsonl.with_name(jsonl.name + ".tmp")
    key = cfg.key()
    with open(tmp, "w") as f:
        f.write(json.dumps({"config": cfg.identity(), "code": source_version()}) + "\n")
        for i in sorted(records):
            f.write(json.dumps({**records[i], "config_key": key}) + "\n")
    tmp.replace(jsonl)


def _read(
    jsonl: Path, adv: Path, cfg: "EvalConfig", x: Tensor, y: Tensor
) -> tuple[dict[int, dict], Tensor, list[str], list[tuple[Path, str]]]:
    """(records, images, notes on recovered damage, [(file to move aside, tag)]); raises on other damage."""
    x_adv = torch.zeros(cfg.n_images, *x.shape[1:])
    if not jsonl.is_file():
        if adv.is_file():
            return {}, x_adv, [f"images {adv.name} without records"], [(adv, ORPHANED)]
        return {}, x_adv, [], []
    records, cut = _read_jsonl(jsonl, cfg, y)
    notes, damaged = (["its last line was cut off"], [(jsonl, DAMAGED)]) if cut else ([], [])
    if not adv.is_file():
        if records:
            return {}, x_adv, notes + [f"the images file {adv.name} is missing"], [(jsonl, DAMAGED)]
        return {}, x_adv, notes, damaged
    stored = load_safetensors(adv, restart=RESTART)
    if set(stored) != {"x_adv"}:
        raise StoredStateError(adv, f"it holds tensors {sorted(stored)}, expected only 'x_adv'", restart=RESTART)
    t = stored["x_adv"]
    if t.dtype != torch.float32 or t.ndim != 4 or tuple(t.shape[1:]) != tuple(x.shape[1:]) or t.shape[0] > cfg.n_images:
        raise StoredStateError(
            adv,
            f"x_adv is {t.dtype} of shape {tuple(t.shape)}, expected float32 of shape "
            f"({cfg.n_images}, {', '.join(map(str, x.shape[1:]))})",
            restart=RESTART,
        )
    if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise StoredStateError(adv, "x_adv has values outside [0, 1] or not finite", restart=RESTART)
    rows = t.shape[0]
    x_adv[:rows] = t
    if rows < cfg.n_images:
        beyond = [i for i in records if i >= rows]
        if beyond:
            records = {i: r for i, r in records.items() if i < rows}
            notes.append(f"the images file {adv.name} has {rows} rows for {len(records) + len(beyond)} records")
            damaged = [(jsonl, DAMAGED)]
        damaged.append((adv, DAMAGED))
    if records:
        idx = torch.tensor(sorted(records))
        linf = (x_adv[idx] - x[idx]).flatten(1).abs().amax(dim=1)
        want = torch.tensor([records[i]["linf"] for i in idx.tolist()], dtype=linf.dtype)
        bad = ((linf - want).abs() > _LINF_TOL).nonzero().flatten()
        if bad.numel():
            i = int(idx[bad[0]])
            raise StoredStateError(
                adv,
                f"the image of example {records[i]['index']} does not match its record in "
                f"{jsonl.name} (l_inf distance {float(linf[bad[0]]):.6g}, recorded "
                f"{records[i]['linf']:.6g}; {bad.numel()} such examples): the two files "
                "come from different runs",
                restart=RESTART,
            )
    return records, x_adv, notes, damaged


def _read_jsonl(jsonl: Path, cfg: "EvalConfig", y: Tensor) -> tuple[dict[int, dict], bool]:
    """Records {position: record} of a checked file, and whether its (unterminated) last line was cut off."""
    try:
        raw = jsonl.read_bytes()
    except OSError as exc:
        raise StoredStateError(jsonl, f"it cannot be read ({exc})", restart=RESTART) from exc
    lines = raw.split(b"\n")
    terminated = raw.endswith(b"\n")
    if terminated:
        lines = lines[:-1]
    header = _json_line(lines[0] if lines else b"")
    if not isinstance(header, dict) or "config" not in header:
        problem = "it is empty" if not raw else 'line 1 is not a records header ({"config": ..., "code": ...})'
        raise StoredStateError(jsonl, problem, restart=RESTART)
    if header["config"] != cfg.identity():
        other = header["config"] if isinstance(header["config"], dict) else {}
        diff = sorted(k for k in set(other) | set(cfg.identity()) if other.get(k) != cfg.identity().get(k))
        raise StoredStateError(
            jsonl, f"its header is for another configuration (differs in {', '.join(diff)})", restart=RESTART
        )
    if header.get("code") != source_version():
        raise StoredStateError(
            jsonl,
            f"it was written by code version {header.get('code')!r}, this is "
            f"{source_version()!r} (results of two code versions are never mixed)",
            restart=RESTART,
        )
    records: dict[int, dict] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        rec = _json_line(line)
        if rec is None:
            if lineno == len(lines) and not terminated:
                return records, True  # cut off while being written or copied: recompute that chunk
            raise StoredStateError(jsonl, f"line {lineno} is not valid JSON", restart=RESTART)
        problem = _record_problem(rec, cfg, y)
        if problem:
            raise StoredStateError(jsonl, f"line {lineno}: {problem}", restart=RESTART)
        pos = rec["index"] - cfg.offset
        if pos in records:
            raise StoredStateError(jsonl, f"line {lineno}: example {rec['index']} is recorded twice", restart=RESTART)
        del rec["config_key"]
        records[pos] = rec
    return records, False


def _json_line(line: bytes) -> object | None:
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _record_problem(rec: object, cfg: "EvalConfig", y: Tensor) -> str:
    """What is wrong with one record ('' if nothing)."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    if rec.get("config_key") != cfg.key():
        return f"a record of another configuration (config_key {rec.get('config_key')!r}, expected {cfg.key()!r})"
    for name in _INT_FIELDS:
        if not isinstance(rec.get(name), int) or isinstance(rec.get(name), bool):
            return f"field {name!r} must be an int, got {rec.get(name)!r}"
    for name in _BOOL_FIELDS:
        if not isinstance(rec.get(name), bool):
            return f"field {name!r} must be true or false, got {rec.get(name)!r}"
    for name in _FLOAT_FIELDS:
        v = rec.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            return f"field {name!r} must be a finite number >= 0, got {v!r}"
    preds = rec.get("adv_preds")
    if not isinstance(preds, list) or len(preds) != cfg.n_eval or not all(type(p) is int for p in preds):
        return f"field 'adv_preds' must be a list of {cfg.n_eval} ints, got {preds!r}"
    pos = rec["index"] - cfg.offset
    if not 0 <= pos < cfg.n_images:
        return f"index {rec['index']} is outside this slice [{cfg.offset}, {cfg.offset + cfg.n_images})"
    if rec["label"] != int(y[pos]):
        return f"example {rec['index']} has label {rec['label']}, the dataset says {int(y[pos])}"
    if rec["robust_frac"] > 1:
        return f"field 'robust_frac' must be in [0, 1], got {rec['robust_frac']}"
    return ""


def read_outcomes(jsonl: str | Path) -> tuple[dict, dict[int, bool]]:
    """(stored configuration, {test-set index: robust}) of a finished run's records file, written by any code
    version: for reports over runs (headline tables, cross-checks), never for resuming (``load_records`` checks
    the configuration and the code version). ValueError naming the file when it is not a records file."""
    path = Path(jsonl)
    lines = [_json_line(l) for l in path.read_bytes().splitlines() if l.strip()] if path.is_file() else []
    if not lines or not isinstance(lines[0], dict) or not isinstance(lines[0].get("config"), dict):
        raise ValueError(f"{path}: not an `rdc eval` records file (expected a header line with 'config')")
    bad = [
        i + 2 for i, r in enumerate(lines[1:]) if not isinstance(r, dict) or "index" not in r or "robust_first" not in r
    ]
    if bad:
        raise ValueError(f"{path}: line {bad[0]} is not a per-image record (expected 'index' and 'robust_first')")
    return lines[0]["config"], {int(r["index"]): bool(r["robust_first"]) for r in lines[1:]}


def summarize(records: Sequence[dict], attacked: bool) -> dict:
    """Counts and rates of a result from its per-image records (one per image, in order; fields of
    ``rdc_lib.evaluation.records``): clean / robust / robust_worst as Wilson dicts, the accuracies, the mean
    fraction of robust re-classifications and the largest l_inf / l2 distances. ``attacked``: False for attack
    'none' (robust = clean)."""
    n = len(records)
    if n == 0:
        raise ValueError("no per-image records to summarize (expected one per evaluated image)")
    clean = wilson(sum(r["clean_pred"] == r["label"] for r in records), n)
    robust = wilson(sum(r["robust_first"] for r in records), n)
    worst = wilson(sum(r["robust_all"] for r in records), n)
    avg = sum(r["robust_frac"] for r in records) / n
    return {
        "clean_acc": clean.value,
        "robust_acc": robust.value if attacked else clean.value,
        "robust_acc_avg": avg if attacked else clean.value,
        "robust_acc_worst": worst.value if attacked else clean.value,
        "clean": clean.as_dict(),
        "robust": robust.as_dict(),
        "robust_worst": worst.as_dict(),
        "max_linf": max(r["linf"] for r in records),
        "max_l2": max(r["l2"] for r in records),
    }
