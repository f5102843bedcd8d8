"""The acceptance targets of issue 20, evaluated from the JSON report of ``batchnorm bench``.

``python -m batchnorm bench`` measures and reports; this script says which targets its rows
meet. Run from the repository root::

    .venv/bin/python -m batchnorm bench --out-dir /tmp/b
    .venv/bin/python benchmarks/targets.py /tmp/b/bench.json
    .venv/bin/python benchmarks/targets.py --check /tmp/b/bench.json       # status 1 on a miss
    .venv/bin/python benchmarks/targets.py --check --run --quick --out-dir /tmp/b  # bench first
    .venv/bin/python benchmarks/targets.py --explain /tmp/b/bench.json  # misses, pass by pass

``--explain`` measures every case with a missed row again, split into passes
(``benchmarks/passes.py``): the measured reason of each miss.

``--run`` takes every argument after it as ``bench``'s, so ``--check`` goes before it.

The targets are issue 20's, which supersede issue 4's (the last three below are issue 4's,
kept). They compare ``batchnorm``'s candidates (``plain`` and the options: renorm, virtual,
weights, mask, zero_debias, adjustment, deferred) with ``native`` in the same case:

- ``plain_bound``: plain ``train_fwdbwd`` reaches 80% of the 8-pass bound, in every case;
- ``plain_nchw``, ``plain_channels_last``: plain ``train_fwdbwd`` at (32,64,56,56) float32
  takes at most 0.75x native's time on NCHW and 1.00x on channels_last;
- ``options_vs_plain_native``: every candidate takes at most 1.10x native's time, training modes;
- ``options_bound``: every candidate reaches 80% of the bound, ``train_fwdbwd``;
- ``inference``: plain ``infer`` takes at most 1.00x native's time, in every case;
- ``composite_3x``, ``tf_keras_2x``: a hand-written composite takes at least 3x the time of the
  candidate computing the same thing, tf_keras at least 2x plain's (geomeans over the
  ``train_fwdbwd`` cases);
- ``saved_bytes``: a candidate saves for backward at most its row's ``saved_bytes_limit``.

A target that no row measures shows ``[ -- ]`` and never fails ``--check``. Rows of a
``--compile`` run are left out: the targets are for eager calls.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from batchnorm.cli import bench
from batchnorm.cli.__main__ import build_parser
from batchnorm.cli._allocator import keep_freed_memory

Row = dict[str, Any]
Check = tuple[str, float, bool]  # (row label, value, whether it meets the target)

BOUND_FRACTION = 0.80
FOCUS_SHAPE = (32, 64, 56, 56)  # the case of the layout targets, in float32
PLAIN_NCHW_RATIO, PLAIN_CHANNELS_LAST_RATIO = 0.75, 1.00
OPTIONS_RATIO = 1.10
INFERENCE_RATIO = 1.00
SLOWDOWNS = (("composite", 3.0), ("tf_keras", 2.0))  # rival / ours, at least


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _row_label(row: Row) -> str:
    dims = ",".join(map(str, row["shape"]))
    return f"({dims}) {row['layout']} {row['dtype']} {row['mode']} {row['candidate']}"


def _target(
    name: str,
    description: str,
    checked: Sequence[Check],
    worst_is: Callable[..., Check] = max,
) -> dict[str, Any]:
    """A target's verdict from ``(label, value, met)`` triples; ``worst_is`` is max or min."""
    worst = worst_is(checked, key=lambda item: item[1]) if checked else None
    return {
        "id": name,
        "description": description,
        "met": None if not checked else all(met for _, _, met in checked),
        "reason": None if checked else "not measured",
        "worst": None if worst is None else worst[1],
        "worst_row": None if worst is None else worst[0],
        "checked": len(checked),
        "misses": [f"{label}: {value:.3g}" for label, value, met in checked if not met],
        "missed_rows": [label for label, _, met in checked if not met],
    }


def _ratios_at_most(rows: Iterable[Row], limit: float) -> list[Check]:
    """Each row's time over native's, checked against ``limit``."""
    return [(_row_label(r), r["ratio_to_native"], r["ratio_to_native"] <= limit) for r in rows]


def _bound_at_least(rows: Iterable[Row], fraction: float) -> list[Check]:
    """Each row's fraction of the bandwidth bound, checked against ``fraction``."""
    return [
        (_row_label(r), r["fraction_of_bound"], r["fraction_of_bound"] >= fraction) for r in rows
    ]


def _focus(rows: Iterable[Row], layout: str) -> list[Row]:
    """The rows of :data:`FOCUS_SHAPE` in float32 and ``layout``."""
    return [
        row
        for row in rows
        if tuple(row["shape"]) == FOCUS_SHAPE
        and row["layout"] == layout
        and row["dtype"] == "float32"
    ]


def _slowdown_target(
    by_case: dict[tuple, dict[str, Row]], implementation: str, factor: float
) -> dict[str, Any]:
    """``implementation``'s time over its ``versus`` candidate's, geomean per pair, >= factor.

    The target also carries ``geomeans``: ``{"composite_ghost / virtual": 4.1, ...}``.
    """
    slowdowns: dict[str, list[float]] = {}
    for case_rows in by_case.values():
        for name, row in case_rows.items():
            versus = bench.CANDIDATES[name].versus if name in bench.CANDIDATES else None
            if (
                row["implementation"] == implementation
                and row["mode"] == "train_fwdbwd"
                and versus in case_rows
            ):
                slowdown = row["median_ms"] / case_rows[versus]["median_ms"]
                slowdowns.setdefault(f"{name} / {versus}", []).append(slowdown)
    geomeans = {pair: _geomean(values) for pair, values in slowdowns.items()}
    target = _target(
        f"{implementation}_{factor:g}x",
        f"{implementation} / ours >= {factor:g}x (time, geomean over train_fwdbwd cases)",
        [(pair, value, value >= factor) for pair, value in geomeans.items()],
        min,
    )
    target["geomeans"] = geomeans
    return target


def _saved_bytes_target(ours: Iterable[Row]) -> dict[str, Any]:
    """Bytes saved for backward over each row's limit, at most 1."""
    limited = [row for row in ours if row.get("saved_bytes_limit")]
    return _target(
        "saved_bytes",
        "saved for backward / (native's + 16 per-channel float32 vectors + weights or mask) <= 1",
        [
            (
                _row_label(r),
                r["saved_bytes"] / r["saved_bytes_limit"],
                r["saved_bytes"] <= r["saved_bytes_limit"],
            )
            for r in limited
        ],
    )


def evaluate_targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Check the targets of issue 20 against the rows of a bench report.

    Each target is a dict: ``id``, ``description``, ``met`` (True, False, or None when no row
    measured it), ``reason`` (why not, when ``met`` is None), ``worst`` (the worst value
    checked, in the description's unit), ``worst_row``, ``checked`` (how many values were
    checked) and ``misses`` (one line per value that missed). Compiled rows are left out.

    Example:
        >>> row = {"shape": [8, 4], "layout": "dense", "dtype": "float32", "mode": "infer",
        ...        "candidate": "plain", "implementation": "batchnorm", "ratio_to_native": 0.9}
        >>> [(t["id"], t["met"]) for t in evaluate_targets([row]) if t["met"] is not None]
        [('inference', True)]
    """
    eager = [row for row in rows if not row.get("compiled")]
    by_case: dict[tuple, dict[str, Row]] = {}
    for row in eager:
        case = (tuple(row["shape"]), row["layout"], row["dtype"], row["mode"])
        by_case.setdefault(case, {})[row["candidate"]] = row
    ours = [row for row in eager if row["implementation"] == "batchnorm"]
    ours_step = [row for row in ours if row["mode"] == "train_fwdbwd"]
    plain_step = [row for row in ours_step if row["candidate"] == "plain"]
    plain_infer = [row for row in ours if row["mode"] == "infer" and row["candidate"] == "plain"]
    ours_training = [row for row in ours if row["mode"] != "infer"]
    bound = f">= {BOUND_FRACTION:.2f} of the bound"
    focus = f"({','.join(map(str, FOCUS_SHAPE))})"
    return [
        _target(
            "plain_bound",
            f"plain train_fwdbwd {bound}, every shape/layout/dtype",
            _bound_at_least(plain_step, BOUND_FRACTION),
            min,
        ),
        _target(
            "plain_nchw",
            f"plain train_fwdbwd <= {PLAIN_NCHW_RATIO:.2f}x native, {focus} NCHW float32",
            _ratios_at_most(_focus(plain_step, "NCHW"), PLAIN_NCHW_RATIO),
        ),
        _target(
            "plain_channels_last",
            f"plain train_fwdbwd <= {PLAIN_CHANNELS_LAST_RATIO:.2f}x native, {focus}"
            " channels_last float32",
            _ratios_at_most(_focus(plain_step, "channels_last"), PLAIN_CHANNELS_LAST_RATIO),
        ),
        _target(
            "options_vs_plain_native",
            f"every option (plain included) <= {OPTIONS_RATIO:.2f}x native, training modes",
            _ratios_at_most(ours_training, OPTIONS_RATIO),
        ),
        _target(
            "options_bound",
            f"every option (plain included) {bound}, train_fwdbwd",
            _bound_at_least(ours_step, BOUND_FRACTION),
            min,
        ),
        _target(
            "inference",
            f"plain infer <= {INFERENCE_RATIO:.2f}x native, every case",
            _ratios_at_most(plain_infer, INFERENCE_RATIO),
        ),
        *(_slowdown_target(by_case, name, factor) for name, factor in SLOWDOWNS),
        _saved_bytes_target(ours),
    ]


def format_targets(targets: Sequence[dict[str, Any]]) -> str:
    """One line per target: ``[ OK ]``, ``[MISS]`` or ``[ -- ]`` (not measured).

    Example:
        >>> print(format_targets(evaluate_targets([])[:1]))
        targets (issue 20):
          [ -- ] plain train_fwdbwd >= 0.80 of the bound, every shape/layout/dtype: not measured
    """
    lines = ["targets (issue 20):"]
    for target in targets:
        if target["met"] is None:
            lines.append(f"  [ -- ] {target['description']}: {target['reason']}")
            continue
        mark = " OK " if target["met"] else "MISS"
        detail = f"worst {target['worst']:.2f} ({target['worst_row']})"
        if target["misses"]:
            detail += f"; {len(target['misses'])} of {target['checked']} missed"
        lines.append(f"  [{mark}] {target['description']}: {detail}")
    return "\n".join(lines)


# The targets whose misses are rows of bench's cases, which ``--explain`` breaks into passes.
EXPLAINED = (
    "plain_bound",
    "plain_nchw",
    "plain_channels_last",
    "options_vs_plain_native",
    "options_bound",
    "inference",
)


def explain(targets: Sequence[dict[str, Any]], rows: Sequence[Row], rounds: int) -> Iterable[str]:
    """The measured reason of each miss: every missed case's calls split into passes.

    For each case with a missed row, :func:`passes.measure` times the missed candidates and
    native's kernels, interleaved; a line per candidate gives its passes, and for ours the
    passes that make up most of the gap to native's. Yields the lines as they are measured.
    """
    by_label = {_row_label(row): row for row in rows if not row.get("compiled")}
    missed: dict[tuple, list[str]] = {}
    for target in targets:
        if target["id"] in EXPLAINED and target["met"] is False:
            for label in target["missed_rows"]:
                row = by_label[label]
                case = (tuple(row["shape"]), row["layout"], row["dtype"], row["mode"])
                if row["candidate"] not in missed.setdefault(case, []):
                    missed[case].append(row["candidate"])
    if not missed:
        return
    passes = passes_module()
    yield (
        f"reasons (benchmarks/passes.py: each pass timed inside its call, native's kernels"
        f" alone; ms, median of {rounds} rounds; % of each pass's bound at the copy's bandwidth):"
    )
    for (shape, layout, dtype, mode), candidates in missed.items():
        case = bench.Case(shape, layout, dtype, mode)
        medians = passes.measure(case, candidates, rounds)
        yield f"  {case.label} (missed: {', '.join(candidates)}):"
        for name, line in passes.format_breakdown(medians).items():
            yield f"    {line}{_gap(medians[name], medians['native']) if name != 'native' else ''}"


def passes_module() -> ModuleType:
    """``benchmarks/passes.py``, beside this script, as a module (``benchmarks`` is no package)."""
    spec = importlib.util.spec_from_file_location(
        "benchmarks_passes", Path(__file__).with_name("passes.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gap(ours: dict[str, float], native: dict[str, float]) -> str:
    """The passes that take most of ``ours``'s time beyond ``native``'s, largest first."""
    keys = ("stats", "apply", "backward", "training", "other")
    gaps = {key: ours.get(key, 0.0) - native.get(key, 0.0) for key in keys}
    largest = sorted((gap, key) for key, gap in gaps.items() if gap > 0)[::-1][:2]
    if not largest:
        return ""
    return "; beyond native's: " + ", ".join(f"{key} +{gap:.2f}" for gap, key in largest)


def read_report(path: Path) -> dict[str, Any]:
    """The report ``bench`` wrote to ``path``.

    Raises:
        OSError: When the file cannot be read.
        ValueError: When it is not JSON, or not a report of ``bench``.
    """
    report = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(report, dict) or report.get("schema") != bench.SCHEMA:
        raise ValueError(f"not a report of batchnorm bench (schema {bench.SCHEMA!r})")
    return report


def run_bench(bench_args: Sequence[str]) -> tuple[int, Path]:
    """Run ``batchnorm bench`` with ``bench_args`` in this process: its status and JSON path."""
    args = build_parser().parse_args(["bench", *bench_args])
    json_path, _ = bench.output_paths(args)
    return args.run(args), json_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/targets.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("report", nargs="?", type=Path, help="the bench.json that bench wrote")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a measured target is missed"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="measure each missed case again, split into passes (benchmarks/passes.py)",
    )
    parser.add_argument(
        "--explain-rounds", type=int, default=5, help="rounds of --explain's measurements"
    )
    parser.add_argument(
        "--run",
        nargs=argparse.REMAINDER,
        metavar="BENCH_ARGS",
        help="run `batchnorm bench` with the arguments that follow, then evaluate its report",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the targets' verdicts; the exit status.

    Returns:
        0; 1 with ``--check`` when a measured target was missed, or when ``--run``'s bench
        reported a failed candidate; 2 for an unreadable report or bench's own status 2.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.report is None) == (args.run is None):
        parser.error("give either a report or --run [BENCH_ARGS...]")
    bench_status, path = 0, args.report
    if args.run is not None:
        bench_status, path = run_bench(args.run)
        if bench_status == 2:
            return bench_status
        print()
    try:
        report = read_report(path)
    except (OSError, ValueError) as error:
        parser.error(f"{path}: {error}")
    targets = evaluate_targets(report["rows"])
    print(format_targets(targets))
    if args.explain:
        keep_freed_memory()
        for line in explain(targets, report["rows"], args.explain_rounds):
            print(line, flush=True)
    if report["config"].get("compile"):
        print("note: a --compile run: its rows are compiled calls, the targets are for eager ones")
    missed = any(target["met"] is False for target in targets)
    return 1 if bench_status or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
