"""``benchmarks/targets.py``: the acceptance targets, evaluated from the report ``bench`` writes.

Oracles: hand-built rows whose verdicts follow from the thresholds (met, missed, not measured);
the exit status of ``--check`` on reports written here; a tiny real bench run, whose report must
give a verdict to exactly the targets its rows measure. Nothing here asserts a timing.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import batchnorm as bn
from batchnorm.cli import bench
from batchnorm.cli.__main__ import main as cli_main

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "targets.py"
TARGET_IDS = [
    "plain_bound",
    "plain_nchw",
    "plain_channels_last",
    "options_vs_plain_native",
    "options_bound",
    "inference",
    "composite_3x",
    "tf_keras_2x",
    "saved_bytes",
]
TINY_BENCH = ["--shapes", "4x3", "--dtypes", "float32", "--rounds", "1", "--warmup", "0", "--quiet"]


def load_script() -> ModuleType:
    """``benchmarks/targets.py`` as a module (``benchmarks`` is no package)."""
    spec = importlib.util.spec_from_file_location("benchmarks_targets", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


targets = load_script()


def _row(
    candidate: str, mode: str = "train_fwdbwd", ratio: float = 1.0, **extra: Any
) -> dict[str, Any]:
    """A bench row of (32,64,56,56) NCHW float32, 90% of the bound, unless ``extra`` says else."""
    row = {
        "shape": [32, 64, 56, 56],
        "layout": "NCHW",
        "dtype": "float32",
        "mode": mode,
        "candidate": candidate,
        "implementation": bench.CANDIDATES[candidate].implementation,
        "median_ms": 10.0 * ratio,
        "ratio_to_native": ratio,
        "fraction_of_bound": 0.9,
        "input_bytes": 1000,
        "saved_bytes": None,
        "saved_bytes_limit": None,
        "compiled": False,
    }
    return row | extra


def verdicts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {target["id"]: target for target in targets.evaluate_targets(rows)}


def write_report(path: Path, rows: list[dict[str, Any]], compiled: bool = False) -> Path:
    report = {"schema": bench.SCHEMA, "config": {"compile": compiled}, "rows": rows}
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


# ------------------------------------------------------------------ verdicts from hand-built rows

CL, BF16 = {"layout": "channels_last"}, {"dtype": "bfloat16"}
VERDICTS = {  # target id: (rows, met) for a met, a missed and an unmeasured target
    "plain_bound": (
        ([_row("plain", fraction_of_bound=0.85), _row("plain", **CL, fraction_of_bound=0.8)], True),
        ([_row("plain", **BF16, fraction_of_bound=0.79), _row("plain")], False),
        (
            [
                _row("plain", "train_fwd", fraction_of_bound=0.1),
                _row("renorm", fraction_of_bound=0.1),
            ],
            None,
        ),
    ),
    "plain_nchw": (
        ([_row("plain", ratio=0.75)], True),
        ([_row("plain", ratio=0.76), _row("plain", ratio=0.5, **CL)], False),
        (
            [_row("plain", ratio=2.0, shape=[64, 256, 14, 14]), _row("plain", ratio=2.0, **BF16)],
            None,
        ),
    ),
    "plain_channels_last": (
        ([_row("plain", ratio=1.0, **CL), _row("plain", ratio=0.9)], True),
        ([_row("plain", ratio=1.01, **CL)], False),
        ([_row("plain", ratio=2.0), _row("plain", "infer", ratio=2.0, **CL)], None),
    ),
    "options_vs_plain_native": (
        (
            [_row("plain", ratio=1.1), _row("deferred", "train_fwd"), _row("plain", "infer", 3.0)],
            True,
        ),
        ([_row("renorm", ratio=1.11), _row("virtual", "train_fwd", 1.2), _row("mask")], False),
        (
            [
                _row("plain", "infer", 3.0),
                _row("composite_renorm", ratio=5.0),
                _row("native", ratio=1.0),
            ],
            None,
        ),
    ),
    "options_bound": (
        ([_row("weights", fraction_of_bound=0.8), _row("plain", fraction_of_bound=0.95)], True),
        ([_row("mask", fraction_of_bound=0.5), _row("zero_debias")], False),
        (
            [
                _row("adjustment", "train_fwd", fraction_of_bound=0.1),
                _row("native", fraction_of_bound=0.1),
            ],
            None,
        ),
    ),
    "inference": (
        ([_row("plain", "infer", 1.0), _row("plain", "infer", 0.8, **CL)], True),
        ([_row("plain", "infer", 1.05), _row("plain", "infer", 0.9, **BF16)], False),
        ([_row("plain", ratio=3.0), _row("native", "infer", 1.0)], None),
    ),
    "composite_3x": (
        ([_row("renorm", ratio=1.0), _row("composite_renorm", ratio=3.0)], True),
        (
            [
                _row("renorm"),
                _row("composite_renorm", ratio=6.0),
                _row("virtual", ratio=1.1),
                _row("composite_ghost", ratio=2.2),  # 6x and 2x ours
            ],
            False,
        ),
        (
            [
                _row("composite_renorm", ratio=2.0),
                _row("renorm", "train_fwd"),
                _row("composite_renorm", "train_fwd", 2.0),
            ],
            None,
        ),
    ),
    "tf_keras_2x": (
        ([_row("plain"), _row("tf_keras", ratio=2.0), _row("tf_keras_fused", ratio=7.0)], True),
        ([_row("plain"), _row("tf_keras", ratio=1.5)], False),
        (
            [_row("tf_keras", ratio=1.5), _row("plain", "infer"), _row("tf_keras", "infer", 1.5)],
            None,
        ),
    ),
    "saved_bytes": (
        ([_row("plain", saved_bytes=1100, saved_bytes_limit=1100)], True),
        (
            [
                _row("renorm", saved_bytes=1200, saved_bytes_limit=1100),
                _row("plain", saved_bytes=1000, saved_bytes_limit=1100),
            ],
            False,
        ),
        ([_row("native", saved_bytes=1010), _row("plain", saved_bytes=5000)], None),
    ),
}
VERDICT_CASES = [
    pytest.param(target_id, rows, met, id=f"{target_id}-{kind}")
    for target_id, cases in VERDICTS.items()
    for kind, (rows, met) in zip(("met", "missed", "unmeasured"), cases, strict=True)
]


def test_every_target_is_evaluated_and_unmeasured_without_rows() -> None:
    evaluated = targets.evaluate_targets([])
    assert [target["id"] for target in evaluated] == TARGET_IDS
    for target in evaluated:
        assert (target["met"], target["reason"], target["checked"]) == (None, "not measured", 0)


@pytest.mark.parametrize(("target_id", "rows", "met"), VERDICT_CASES)
def test_a_target_follows_its_threshold(
    target_id: str, rows: list[dict[str, Any]], met: bool | None
) -> None:
    target = verdicts(rows)[target_id]
    assert target["met"] is met
    assert (target["checked"] == 0) == (met is None)
    assert bool(target["misses"]) == (met is False)


def test_worst_values_and_miss_lines() -> None:
    assert verdicts(VERDICTS["plain_bound"][0][0])["plain_bound"]["worst"] == 0.8
    options = verdicts(VERDICTS["options_vs_plain_native"][1][0])["options_vs_plain_native"]
    assert options["worst"] == 1.2
    assert options["worst_row"] == "(32,64,56,56) NCHW float32 train_fwd virtual"
    assert options["misses"] == [
        "(32,64,56,56) NCHW float32 train_fwdbwd renorm: 1.11",
        "(32,64,56,56) NCHW float32 train_fwd virtual: 1.2",
    ]
    saved = verdicts(VERDICTS["saved_bytes"][1][0])["saved_bytes"]
    assert saved["worst"] == pytest.approx(1200 / 1100)
    assert saved["checked"] == 2


def test_slowdowns_are_geomeans_per_pair_over_cases() -> None:
    rows = [
        _row("renorm"),
        _row("composite_renorm", ratio=2.0),
        _row("renorm", **CL),
        _row("composite_renorm", ratio=8.0, **CL),
        _row("virtual", ratio=1.1),
        _row("composite_ghost", ratio=2.2),
    ]
    target = verdicts(rows)["composite_3x"]
    assert target["geomeans"] == pytest.approx(
        {"composite_renorm / renorm": 4.0, "composite_ghost / virtual": 2.0}
    )
    assert (target["met"], target["worst"], target["worst_row"]) == (
        False,
        pytest.approx(2.0),
        "composite_ghost / virtual",
    )


def test_compiled_rows_are_left_out() -> None:
    rows = [_row("plain", ratio=5.0, compiled=True), _row("plain", "infer", 5.0, compiled=True)]
    assert all(target["met"] is None for target in targets.evaluate_targets(rows))


def test_the_summary_marks_met_missed_and_unmeasured_targets() -> None:
    rows = [_row("plain", ratio=0.5), _row("plain", ratio=1.5, **CL), _row("plain", **BF16)]
    lines = targets.format_targets(targets.evaluate_targets(rows)).splitlines()
    assert lines[0] == "targets (issue 20):"
    assert lines[1] == (
        "  [ OK ] plain train_fwdbwd >= 0.80 of the bound, every shape/layout/dtype: worst 0.90"
        " ((32,64,56,56) NCHW float32 train_fwdbwd plain)"
    )
    assert lines[2].startswith("  [ OK ] plain train_fwdbwd <= 0.75x native, (32,64,56,56) NCHW")
    assert lines[3].startswith("  [MISS] plain train_fwdbwd <= 1.00x native, (32,64,56,56)")
    assert lines[4].startswith("  [MISS] every option (plain included) <= 1.10x native")
    assert lines[4].endswith("; 1 of 3 missed")
    assert "  [ -- ] plain infer <= 1.00x native, every case: not measured" in lines
    assert len(lines) == 1 + len(TARGET_IDS)


def test_the_module_examples_hold() -> None:
    result = doctest.testmod(targets)
    assert result.attempted >= 2 and result.failed == 0


# ------------------------------------------------------------------ the script


@pytest.mark.parametrize(
    ("rows", "check_status"),
    [
        ([_row("plain", "infer", 1.2)], 1),
        ([_row("plain", "infer", 0.9)], 0),
        ([], 0),
    ],
    ids=["missed", "met", "unmeasured"],
)
def test_check_exits_1_on_a_missed_target_only(
    rows: list[dict[str, Any]],
    check_status: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = str(write_report(tmp_path / "bench.json", rows))
    assert targets.main([path]) == 0
    assert targets.main(["--check", path]) == check_status
    out = capsys.readouterr().out
    assert out.startswith("targets (issue 20):\n")
    assert ("[MISS] plain infer" in out) == (check_status == 1)


def test_a_compile_report_gets_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_report(tmp_path / "bench.json", [_row("plain", compiled=True)], compiled=True)
    assert targets.main(["--check", str(path)]) == 0
    assert "note: a --compile run" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give either a report or --run"),
        (["x.json", "--run", "--quick"], "give either a report or --run"),
        (["missing.json"], "missing.json: [Errno 2]"),
        (["not-bench.json"], "not-bench.json: not a report of batchnorm bench"),
        (["not-json.json"], "not-json.json: Expecting value"),
    ],
    ids=["nothing", "both", "missing", "other-json", "not-json"],
)
def test_bad_input_exits_2(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-bench.json").write_text('{"rows": []}', encoding="utf-8")
    (tmp_path / "not-json.json").write_text("rows", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        targets.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_real_bench_report_gets_a_verdict_for_what_it_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", *TINY_BENCH, "--modes", "infer,train_fwdbwd"]
    argv += ["--options", "plain,renorm,composite_renorm", "--out-dir", str(tmp_path)]
    assert cli_main(argv) == 0
    report = targets.read_report(tmp_path / "bench.json")
    assert "targets" not in report  # the CLI measures, this script judges

    checked = {
        target["id"]: target["checked"] for target in targets.evaluate_targets(report["rows"])
    }
    assert checked == {
        "plain_bound": 1,
        "plain_nchw": 0,  # not (32,64,56,56)
        "plain_channels_last": 0,
        "options_vs_plain_native": 2,  # plain and renorm, train_fwdbwd
        "options_bound": 2,
        "inference": 1,
        "composite_3x": 1,
        "tf_keras_2x": 0,  # not asked for
        "saved_bytes": 2,
    }
    capsys.readouterr()
    assert targets.main([str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("targets (issue 20):\n")
    assert out.count("[ -- ]") == 3


def test_run_benches_first_then_evaluates_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path = tmp_path / "r.json"
    argv = [
        "--run",
        *TINY_BENCH,
        "--modes",
        "infer",
        "--options",
        "plain",
        "--json",
        str(json_path),
    ]
    assert targets.main(argv) == 0
    out = capsys.readouterr().out
    table, summary = out.split("\ntargets (issue 20):\n")
    assert "(4,3) dense float32 infer" in table
    assert f"results written to {json_path}" in table
    assert "[ -- ]" in summary and "plain infer <= 1.00x native" in summary
    assert targets.read_report(json_path)["rows"]


def test_run_passes_on_bench_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert targets.main(["--check", "--run", "--device", "cuda", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert "CUDA is not available" in err
    assert "targets (issue 20)" not in out


def test_the_cli_has_no_check_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--check"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --check" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["bench", "--help"])
    assert "--check" not in capsys.readouterr().out


# ------------------------------------------------------------------ --explain, pass by pass

passes = targets.passes_module()


def _route_tables() -> list[dict[str, Any]]:
    return [table for tables in passes._TABLES.values() for table in tables]


@pytest.mark.parametrize(
    ("shape", "timed", "untimed"),
    [
        ((8, 16, 4, 4), {"training"}, {"stats", "apply", "backward"}),  # ATen's whole kernel
        ((4, 16, 64, 80), {"stats", "apply", "backward"}, {"training"}),  # the passes
    ],
    ids=["small: ATen's training kernel", "large: the passes"],
)
def test_the_pass_timer_gives_each_pass_of_the_plan_its_time(shape, timed, untimed) -> None:
    """The timer attributes a training step to the passes its plan runs, and leaves the route
    tables as they were."""
    before = [dict(table) for table in _route_tables()]
    x = torch.randn(shape, requires_grad=True)
    gamma, beta = torch.ones(shape[1], requires_grad=True), torch.zeros(shape[1])
    state = torch.zeros(shape[1]), torch.ones(shape[1])

    def step() -> None:
        y = bn.functional.batch_norm(x, *state, gamma, beta, training=True, axis=1).output
        y.sum().backward()

    with passes.PassTimer() as timer:
        split = timer.split(step)
    assert {key for key in timed | untimed if split[key] > 0} == timed
    assert split["total"] == pytest.approx(sum(v for k, v in split.items() if k != "total"))
    assert [dict(table) for table in _route_tables()] == before
    assert bn.functional.aten_training is passes.functional.aten_training


def test_explain_splits_each_missed_case_into_passes() -> None:
    """A report whose plain step missed: the case is measured again, native's kernels alone
    and ours pass by pass, with the passes beyond native's."""
    row = _row("plain", ratio=1.5, shape=[4, 16, 64, 80])
    native = _row("native", shape=[4, 16, 64, 80])
    report_targets = targets.evaluate_targets([row, native])
    lines = list(targets.explain(report_targets, [row, native], rounds=1))
    assert lines[0].startswith("reasons (benchmarks/passes.py")
    assert lines[1] == "  (4,16,64,80) NCHW float32 train_fwdbwd (missed: plain):"
    assert lines[2].startswith("    native ") and "stats" in lines[2] and "backward" in lines[2]
    assert lines[3].startswith("    plain ") and "% of bound)" in lines[3]
    assert len(lines) == 4


def test_explain_says_nothing_when_every_target_is_met() -> None:
    rows = [_row("plain", ratio=0.5), _row("native")]
    assert list(targets.explain(targets.evaluate_targets(rows), rows, rounds=1)) == []


def test_the_pass_module_examples_hold() -> None:
    result = doctest.testmod(passes)
    assert result.attempted >= 1 and result.failed == 0
