"""One evaluation result from contiguous shards of one evaluation, recomputed from their per-image records.

``merge_shards(results, records_files)`` joins ``rdc eval --json`` results of contiguous image slices of one
configuration (e.g. images 0-99 with the sanity checks, 100-199 without) into the result one run over all the
images would have given: every count, rate and distance is recomputed from the shards' per-image records
(``records.summarize``, as ``evaluate`` does), the attack summaries are concatenated chunk by chunk, the checks
come from the first shard. Shards of different configurations, denoiser checkpoints, commits (or
dirty flags), library versions or code versions are refused with an error naming what differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from .records import summarize
from .runner import EvalConfig

__all__ = ["SHARD_FIELDS", "ShardError", "merge_provenance", "merge_shards", "read_records_file"]

SHARD_FIELDS = ("n", "offset", "run_checks", "chunk")  # configuration fields that may differ between shards
SAME_PROVENANCE = ("commit", "dirty", "versions")  # what every shard's provenance must share
# Result fields a merge computes (the rest of a result is its configuration, which shards share).
SUMMARY_FIELDS = (
    "clean_acc",
    "robust_acc",
    "robust_acc_avg",
    "robust_acc_worst",
    "clean",
    "robust",
    "robust_worst",
    "max_linf",
    "max_l2",
)
FIRST_SHARD_FIELDS = ("checks", "checks_skipped", "trusted")  # the sanity checks run on the first shard only
MERGED_FIELDS = (
    *SUMMARY_FIELDS,
    *FIRST_SHARD_FIELDS,
    "attack_stats",
    "attacks_dropped",
    "seconds",
    "provenance",
    "command",
    "key",
    "robust_images",
    "not_recorded",
)


class ShardError(ValueError):
    """Shards that are not contiguous slices of one run, or records that do not back their results."""


def read_records_file(path: str | Path) -> tuple[dict, dict[int, dict]]:
    """(header {"config", "code"}, {test-set index: record}) of a finished run's records file (any code version;
    for reports, never for resuming). ShardError naming the file when it is not a records file."""
    path = Path(path)
    try:
        lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: not a readable `rdc eval` records file ({exc})") from None
    if not lines or not isinstance(lines[0], dict) or not isinstance(lines[0].get("config"), dict):
        raise ShardError(f"{path}: not an `rdc eval` records file (expected a header line with 'config')")
    need = ("index", "label", "clean_pred", "robust_first", "robust_all", "robust_frac", "linf", "l2")
    for lineno, rec in enumerate(lines[1:], start=2):
        if not isinstance(rec, dict) or any(k not in rec for k in need):
            raise ShardError(f"{path}: line {lineno} is not a per-image record (expected {', '.join(need)})")
    return lines[0], {int(r["index"]): r for r in lines[1:]}


def _config_fields() -> tuple[str, ...]:
    return tuple(f.name for f in EvalConfig.flat_fields())


def _run_config(result: dict) -> dict:
    """The configuration fields shards of one run share."""
    return {k: result.get(k) for k in _config_fields() if k not in SHARD_FIELDS}


def _span(r: dict) -> str:
    return f"images {r['offset']}-{r['offset'] + r['n'] - 1}"


def check_one_run(shards: Sequence[dict]) -> None:
    """ShardError naming the first difference unless the shards (sorted by offset) are contiguous slices of one
    configuration measured with one denoiser checkpoint, commit, dirty flag and library versions."""
    for a, b in zip(shards, shards[1:]):
        if a["offset"] + a["n"] != b["offset"]:
            raise ShardError(f"shards are not contiguous: {_span(a)} then {_span(b)}")
    first = shards[0]
    for s in shards[1:]:
        cfg_a, cfg_b = _run_config(first), _run_config(s)
        diff = sorted(k for k in cfg_a if cfg_a[k] != cfg_b[k])
        if diff:
            raise ShardError(
                f"shards of different configurations: {_span(first)} and {_span(s)} differ in "
                + ", ".join(f"{k} ({cfg_a[k]!r} vs {cfg_b[k]!r})" for k in diff)
            )
        if s.get("attacks_dropped") != first.get("attacks_dropped"):
            raise ShardError(
                f"shards ran different attacks: {_span(first)} dropped {first.get('attacks_dropped')}, "
                f"{_span(s)} dropped {s.get('attacks_dropped')}"
            )
    merge_provenance([(_span(s), s.get("provenance")) for s in shards])


def merge_provenance(named: Iterable[tuple[str, dict | None]]) -> dict:
    """One provenance for shards of one run: their shared commit, dirty flag and versions, the union of the
    checkpoints they hashed (one hash per file), the commands joined by ' && ' and the last UTC time.
    ``named``: (shard name, provenance) pairs. ShardError naming the shards and the field that differs."""
    named = list(named)
    for name, prov in named:
        if not prov or any(k not in prov for k in SAME_PROVENANCE):
            raise ShardError(
                f"shard {name} carries no provenance (expected commit, dirty, versions: the output of "
                "`rdc eval --json`); shards of unknown code are never merged"
            )
    (name0, p0), rest = named[0], named[1:]
    checkpoints = dict(p0.get("checkpoints", {}))
    for name, prov in rest:
        for key in SAME_PROVENANCE:
            if prov[key] != p0[key]:
                raise ShardError(
                    f"shards measured by different code: {name0} has {key} {p0[key]!r}, {name} has "
                    f"{prov[key]!r} (expected one commit, dirty flag and library versions)"
                )
        for path, digest in prov.get("checkpoints", {}).items():
            if checkpoints.setdefault(path, digest) != digest:
                raise ShardError(
                    f"shards read different checkpoints: {path} has sha256 {checkpoints[path][:12]} in "
                    f"{name0}, {digest[:12]} in {name} (expected one denoiser)"
                )
    return {
        "commit": p0["commit"],
        "dirty": p0["dirty"],
        "checkpoints": dict(sorted(checkpoints.items())),
        "versions": p0["versions"],
        "command": " && ".join(p.get("command", "") for _, p in named),
        "utc": max(p.get("utc", "") for _, p in named),
    }


def shard_records(result: dict, record_files: Sequence[str | Path]) -> tuple[str, list[dict]]:
    """(code version, records of the result's images in order) from the records file among ``record_files``
    whose header is the result's configuration; ShardError when none is, when images are missing, or when
    the records disagree with the result's own counts."""
    for path in record_files:
        try:
            head, recs = read_records_file(path)
        except ShardError:
            continue
        if any(result.get(k) != v for k, v in head["config"].items()):
            continue
        images = range(result["offset"], result["offset"] + result["n"])
        missing = [i for i in images if i not in recs]
        if missing:
            raise ShardError(
                f"{path}: the records lack {len(missing)} of {_span(result)} (first {missing[0]}); "
                "expected every image of the shard"
            )
        ordered = [recs[i] for i in images]
        mine = summarize(ordered, result["attack"] != "none")
        for k in ("clean", "robust", "robust_worst"):
            if k in result and result[k]["correct"] != mine[k]["correct"]:
                raise ShardError(
                    f"{path}: the records of {_span(result)} count {mine[k]['correct']} {k} images, "
                    f"the result {result[k]['correct']} (expected the records of this run)"
                )
        return head.get("code", ""), ordered
    raise ShardError(
        f"no records file for {_span(result)} of `{result.get('command', result['defense'])}` among the "
        f"{len(record_files)} given (expected the .jsonl under its --records folder whose header has "
        "its configuration)"
    )


def merge_shards(results: Sequence[dict], record_files: Sequence[str | Path]) -> dict:
    """The result of one run over the images of contiguous shards ``results`` (``rdc eval --json`` dicts, any
    order; the first by offset carries the checks): configuration, counts and rates from the per-image records
    in ``record_files``, attack summaries concatenated, seconds summed, one provenance, and ``shards`` (offset,
    n, run_checks, command, seconds, provenance of each). ShardError unless the shards are one run; records are
    required for more than one shard (one whole run without them keeps its own counts)."""
    if not results:
        raise ShardError("no shards to merge")
    shards = sorted(results, key=lambda r: r["offset"])
    unknown = sorted({k for r in shards for k in r} - set(_config_fields()) - set(MERGED_FIELDS))
    if unknown:
        raise ShardError(f"shard fields this merge does not know how to combine: {', '.join(unknown)}")
    check_one_run(shards)
    first = shards[0]
    if len(shards) > 1 and not record_files:
        raise ShardError(
            f"merging {len(shards)} shards needs their per-image records (the .jsonl files under their "
            "--records folders): counts and rates are recomputed from them, never copied"
        )
    records: list[dict] = []
    if len(shards) == 1 and not record_files:  # one whole run: its own summary (nothing to recompute)
        summary = {k: first[k] for k in SUMMARY_FIELDS if k in first}
    else:
        codes = set()
        for s in shards:
            code, recs = shard_records(s, record_files)
            codes.add(code)
            records += recs
        if len(codes) > 1:
            raise ShardError(
                f"the shards' records were written by different code versions "
                f"({', '.join(sorted(codes))}); expected one"
            )
        summary = summarize(records, first["attack"] != "none")
    row = {
        **{k: first[k] for k in _config_fields() if k in first},
        "n": sum(s["n"] for s in shards),
        **summary,
        "attack_stats": [c for s in shards for c in s.get("attack_stats", [])],
    }
    attacked = sum(r.get("attacked", r["clean_pred"] == r["label"]) for r in records)
    covered = sum(c.get("n", 0) for c in row["attack_stats"])
    if records and first["attack"] != "none" and covered != attacked:
        row["not_recorded"] = {
            "attack_stats": f"cover {covered} of the {attacked} attacked images (a resumed run "
            "reports only the chunks it attacked itself)"
        }
    if "attacks_dropped" in first:
        row["attacks_dropped"] = first["attacks_dropped"]
    row.update({k: first[k] for k in FIRST_SHARD_FIELDS if k in first})
    row["seconds"] = sum(s["seconds"] for s in shards)
    row["provenance"] = merge_provenance([(_span(s), s.get("provenance")) for s in shards])
    if all("command" in s for s in shards):
        row["command"] = " && ".join(s["command"] for s in shards)
    row["shards"] = [
        {k: s[k] for k in ("offset", "n", "run_checks", "command", "seconds", "provenance") if k in s} for s in shards
    ]
    return row
