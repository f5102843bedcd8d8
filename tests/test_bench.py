"""``batchnorm bench``: the report's structure, the composites' numbers, the measurements' logic.

Oracles: the composites against :func:`batchnorm.functional.batch_norm` (float64, outputs and
gradients); the saved-bytes count against tensors whose saved storages are known by autograd's
rules; a tiny in-process run against the rows it must contain and the identities between its
columns. Nothing here asserts a timing. The targets are ``benchmarks/targets.py``'s
(``tests/test_targets.py``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tolerance

import batchnorm as bn
from batchnorm.cli import _allocator, _composites, bench
from batchnorm.cli.__main__ import main

TRAINING_CANDIDATES = [
    "copy",
    "native",
    "plain",
    "renorm",
    "virtual",
    "weights",
    "mask",
    "zero_debias",
    "adjustment",
    "deferred",
    "composite_renorm",
    "composite_ghost",
    "composite_weighted",
]
INFERENCE_CANDIDATES = ["copy", "native", "plain"]
TINY = ["--shapes", "4x8x6x6,16x8", "--rounds", "2", "--warmup", "1"]


def strict_json(path: Path) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in {path}: not strict JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture
def no_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import tensorflow`` / ``import tf_keras`` fail, whatever is installed."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.setitem(sys.modules, "tf_keras", None)


# ------------------------------------------------------------------ the run and its report


@pytest.mark.usefixtures("no_tensorflow")
def test_quick_run_reports_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", *TINY, "--out-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    report = strict_json(tmp_path / "bench.json")

    assert report["schema"] == "batchnorm-bench/1"
    for key in ("date", "python", "torch", "threads", "cpu_model", "device", "batchnorm"):
        assert key in report["environment"]
    assert report["environment"]["torch"] == torch.__version__
    assert "batchnorm_revision" in report["environment"]
    assert report["config"]["shapes"] == [[4, 8, 6, 6], [16, 8]]
    assert report["config"]["dtypes"] == ["float32"]  # --quick

    cases = [
        ((4, 8, 6, 6), layout, mode)
        for layout in ("NCHW", "channels_last")
        for mode in ("train_fwd", "train_fwdbwd", "infer")
    ] + [((16, 8), "dense", mode) for mode in ("train_fwd", "train_fwdbwd", "infer")]
    found: dict[tuple, list[str]] = {}
    for row in report["rows"]:
        found.setdefault((tuple(row["shape"]), row["layout"], row["mode"]), []).append(
            row["candidate"]
        )
    assert sorted(found) == sorted(cases)
    for (_, _, mode), names in found.items():
        assert names == (INFERENCE_CANDIDATES if mode == "infer" else TRAINING_CANDIDATES)

    for row in report["rows"]:
        assert row["dtype"] == "float32"
        assert row["axis"] == (-1 if row["layout"] == "dense" else 1)
        assert row["rounds"] == 2
        assert row["calls_per_sample"] >= 1
        assert 0 < row["q1_ms"] <= row["median_ms"] <= row["q3_ms"]
        assert math.isclose(row["iqr_ms"], row["q3_ms"] - row["q1_ms"], abs_tol=1e-12)
        assert row["input_bytes"] == math.prod(row["shape"]) * 4
        passes = (
            2
            if row["candidate"] == "copy"
            else {"train_fwd": 3, "train_fwdbwd": 8}.get(row["mode"], 2)
        )
        assert row["bound_passes"] == passes
        gbs = passes * row["input_bytes"] / (row["median_ms"] * 1e-3) / 1e9
        assert math.isclose(row["bandwidth_gbs"], gbs, rel_tol=1e-9)
        assert math.isclose(
            row["fraction_of_bound"], row["bandwidth_gbs"] / row["copy_bandwidth_gbs"], rel_tol=1e-9
        )
        if row["candidate"] == "native":
            assert row["ratio_to_native"] == 1.0
        if row["candidate"] == "copy":
            assert math.isclose(row["fraction_of_bound"], 1.0, rel_tol=1e-9)
        measured = row["mode"] != "infer" and row["candidate"] != "copy"
        assert (row["saved_bytes"] is not None) == measured
        if measured:
            assert row["saved_vs_input"] == row["saved_bytes"] / row["input_bytes"]
            # Every candidate keeps the input (or an output of its size) for the backward.
            assert row["saved_bytes"] >= row["input_bytes"]
        if row["implementation"] == "batchnorm" and measured:
            assert row["saved_bytes_limit"] > row["input_bytes"]

    assert "targets" not in report  # the CLI measures; benchmarks/targets.py judges
    assert any("tf_keras rows skipped" in note for note in report["notes"])

    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert report["png"] == str(tmp_path / "bench.png")
    else:
        assert report["png"] is None

    for title in ("(4,8,6,6) NCHW float32 train_fwdbwd", "(16,8) dense float32 infer"):
        assert title in out
    assert "targets (issue" not in out
    progress = [line for line in err.splitlines() if line.startswith("[")]
    units = 6 * len(TRAINING_CANDIDATES) + 3 * len(INFERENCE_CANDIDATES)
    assert len(progress) == units
    assert progress[0] == f"[ 1/{units}] (4,8,6,6) NCHW float32 train_fwd copy"
    assert progress[-1] == f"[{units}/{units}] (16,8) dense float32 infer plain"


def test_quiet_explicit_paths_and_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, png_path = tmp_path / "a" / "r.json", tmp_path / "b" / "c.png"
    argv = ["bench", "--shapes", "4x3", "--dtypes", "float64,bfloat16", "--modes", "infer"]
    argv += ["--options", "plain", "--rounds", "1", "--warmup", "0", "--threads", "1"]
    argv += ["--json", str(json_path), "--png", str(png_path), "--quiet", "--system-allocator"]
    threads = torch.get_num_threads()
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # restored
    assert capsys.readouterr().err == ""
    report = strict_json(json_path)
    assert report["environment"]["threads"] == 1
    assert report["environment"]["allocator"] == "system allocator as configured"
    assert [(r["dtype"], r["candidate"]) for r in report["rows"]] == [
        (dtype, name) for dtype in ("float64", "bfloat16") for name in ("copy", "native", "plain")
    ]
    assert [r["input_bytes"] for r in report["rows"]] == [96] * 3 + [24] * 3
    assert png_path.exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_the_allocator_keeps_freed_memory_by_default_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(bench, "keep_freed_memory", lambda: calls.append(1) or "kept, say")
    argv = ["bench", "--shapes", "4x3", "--modes", "infer", "--options", "plain"]
    argv += ["--rounds", "1", "--quiet", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    assert calls == [1]
    assert "kept, say" in capsys.readouterr().out.splitlines()[0]
    assert strict_json(tmp_path / "bench.json")["environment"]["allocator"] == "kept, say"


def test_keep_freed_memory_sets_glibc_thresholds_or_says_why_not() -> None:
    message = _allocator.keep_freed_memory()
    if platform.libc_ver()[0] == "glibc":
        assert message == "glibc malloc keeps freed memory: mmap threshold 32 MiB, no trimming"
    else:
        assert message.startswith("system allocator unchanged: ")


@pytest.mark.usefixtures("no_tensorflow")
def test_tf_keras_is_skipped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--shapes", "4x3", "--modes", "infer", "--rounds", "1", "--quiet"]
    argv += ["--options", "plain,tf_keras_fused,tf_keras", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = strict_json(tmp_path / "bench.json")
    assert {row["candidate"] for row in report["rows"]} == {"copy", "native", "plain"}
    (note,) = report["notes"]
    assert "tf_keras cannot be imported" in note
    assert f"note: {note}" in out


def test_missing_matplotlib_skips_the_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["bench", "--shapes", "4x3", "--modes", "infer", "--options", "plain"]
    assert main([*argv, "--rounds", "1", "--quiet", "--out-dir", str(tmp_path)]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "bench.png").exists()
    assert strict_json(tmp_path / "bench.json")["png"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shapes", "4x"], "--shapes: '4x' is not a shape"),
        (["--shapes", "7"], "--shapes: '7' is not a shape"),
        (["--options", "plain,fast"], "--options: 'plain,fast': expected a comma-separated"),
        (["--modes", "train"], "--modes: 'train': expected"),
        (["--dtypes", "int8"], "--dtypes: 'int8': expected"),
        (["--rounds", "0"], "--rounds: '0' is not a positive integer"),
        (["--warmup", "-1"], "--warmup: '-1' is not a non-negative integer"),
    ],
    ids=["shape-trailing-x", "shape-rank-1", "option", "mode", "dtype", "rounds", "warmup"],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unavailable_cuda_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cuda", "--quiet"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--shapes", "--dtypes", "--modes", "--options", "--rounds"):
        assert option in out
    for option in ("--device", "--threads", "--json", "--png", "--out-dir", "--quiet"):
        assert option in out


# ------------------------------------------------------------------ saved bytes


def test_saved_tensor_bytes_follows_autograd() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    nbytes = 4 * 8 * 4
    assert bench.saved_tensor_bytes(lambda: x * 2.0) == 0  # a Python scalar: nothing saved
    assert bench.saved_tensor_bytes(lambda: x + w) == 0  # addition needs no operand
    assert bench.saved_tensor_bytes(x.sin) == nbytes  # sin saves its input
    assert bench.saved_tensor_bytes(lambda: x * w) == nbytes + 8 * 4  # both operands
    assert bench.saved_tensor_bytes(lambda: x.exp().exp()) == 2 * nbytes  # both outputs
    # A view saves its base's whole storage, counted once however many views are saved.
    assert bench.saved_tensor_bytes(lambda: x[:1].sin() + x[2:].sin()) == nbytes
    with torch.no_grad():
        assert bench.saved_tensor_bytes(x.sin) == 0


def test_native_batch_norm_saves_about_its_input() -> None:
    """The baseline of the saved-bytes target: native keeps x and a few channel vectors."""
    x = torch.randn(8, 16, 5, 5, requires_grad=True)
    gamma = torch.ones(16, requires_grad=True)
    beta = torch.zeros(16, requires_grad=True)

    def forward() -> torch.Tensor:
        return torch.nn.functional.batch_norm(
            x, torch.zeros(16), torch.ones(16), gamma, beta, training=True
        )

    saved = bench.saved_tensor_bytes(forward)
    assert x.numel() * 4 < saved <= x.numel() * 4 + 8 * 16 * 4


# ------------------------------------------------------------------ composites


def _layouts() -> list[tuple[str, tuple[int, ...], int]]:
    return [("NCHW", (8, 3, 5, 4), 1), ("channels_last", (8, 3, 5, 4), 1), ("dense", (8, 5), -1)]


def _inputs(shape: tuple[int, ...], layout: str, axis: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    channels = shape[axis]

    def random(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator, dtype=torch.float64)

    x = random(*shape) * 2.0 + 3.0
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return {
        "x": x.requires_grad_(),
        "gamma": (random(channels) * 0.3 + 1.0).requires_grad_(),
        "beta": random(channels).requires_grad_(),
        "dy": random(*shape),
    }


def _compare(composite: torch.Tensor, ours: torch.Tensor, tensors: dict[str, torch.Tensor]) -> None:
    tol = tolerance(torch.float64)
    torch.testing.assert_close(composite, ours, **tol)
    leaves = (tensors["x"], tensors["gamma"], tensors["beta"])
    expected = torch.autograd.grad(ours, leaves, tensors["dy"])
    got_all = torch.autograd.grad(composite, leaves, tensors["dy"])
    for got, want in zip(got_all, expected, strict=True):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize(("layout", "shape", "axis"), _layouts(), ids=lambda v: str(v))
def test_composite_renorm_equals_ours(layout: str, shape: tuple[int, ...], axis: int) -> None:
    t = _inputs(shape, layout, axis)
    channels = shape[axis]
    # Renorm statistics far from the batch's, so that r and d are both clipped on some channels.
    renorm_mean = torch.linspace(-1.0, 5.0, channels, dtype=torch.float64)
    renorm_stddev = torch.linspace(0.5, 4.0, channels, dtype=torch.float64)
    clipping = {"rmin": 0.8, "rmax": 1.5, "dmax": 0.5}
    composite = _composites.renorm_batch_norm(
        t["x"], t["gamma"], t["beta"], renorm_mean, renorm_stddev, axis=axis, **clipping
    )
    ours = bn.functional.batch_norm(
        t["x"],
        torch.zeros(channels, dtype=torch.float64),
        torch.ones(channels, dtype=torch.float64),
        t["gamma"],
        t["beta"],
        training=True,
        axis=axis,
        renorm=True,
        renorm_clipping=clipping,
        moving_stddev=torch.ones(channels, dtype=torch.float64),
        renorm_mean=renorm_mean,
        renorm_stddev=renorm_stddev,
    ).output
    _compare(composite, ours, t)
    no_clip = {"rmin": 0.0, "rmax": math.inf, "dmax": math.inf}
    unclipped = _composites.renorm_batch_norm(
        t["x"], t["gamma"], t["beta"], renorm_mean, renorm_stddev, axis=axis, **no_clip
    )
    assert not torch.allclose(unclipped, composite)  # the clipping was exercised


@pytest.mark.parametrize(("layout", "shape", "axis"), _layouts(), ids=lambda v: str(v))
def test_composite_ghost_equals_ours(layout: str, shape: tuple[int, ...], axis: int) -> None:
    t = _inputs(shape, layout, axis)
    channels = shape[axis]
    with torch.no_grad():
        t["x"][4:] *= 10.0  # the second half of the batch differs, so the groups matter
    composite = _composites.ghost_batch_norm(
        t["x"], t["gamma"], t["beta"], virtual_batch_size=4, axis=axis
    )
    ours = bn.functional.batch_norm(
        t["x"],
        torch.zeros(channels, dtype=torch.float64),
        torch.ones(channels, dtype=torch.float64),
        t["gamma"],
        t["beta"],
        training=True,
        axis=axis,
        virtual_batch_size=4,
        virtual_batch_layout="contiguous",
    ).output
    _compare(composite, ours, t)
    whole_batch = _composites.ghost_batch_norm(
        t["x"], t["gamma"], t["beta"], virtual_batch_size=8, axis=axis
    )
    assert not torch.allclose(whole_batch, composite)


@pytest.mark.parametrize(("layout", "shape", "axis"), _layouts(), ids=lambda v: str(v))
def test_composite_weighted_equals_ours(layout: str, shape: tuple[int, ...], axis: int) -> None:
    t = _inputs(shape, layout, axis)
    channels = shape[axis]
    weights = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 0.25, 1.0, 1.5], dtype=torch.float64)
    composite = _composites.weighted_batch_norm(t["x"], t["gamma"], t["beta"], weights, axis=axis)
    ours = bn.functional.batch_norm(
        t["x"],
        torch.zeros(channels, dtype=torch.float64),
        torch.ones(channels, dtype=torch.float64),
        t["gamma"],
        t["beta"],
        training=True,
        axis=axis,
        batch_weights=weights,
    ).output
    _compare(composite, ours, t)


def test_composites_keep_a_bfloat16_input_in_bfloat16() -> None:
    x = torch.randn(8, 4, 3, 3).to(torch.bfloat16)
    gamma, beta = torch.ones(4), torch.zeros(4)
    outputs = [
        _composites.renorm_batch_norm(x, gamma, beta, torch.zeros(4), torch.ones(4), axis=1),
        _composites.ghost_batch_norm(x, gamma, beta, virtual_batch_size=2, axis=1),
        _composites.weighted_batch_norm(x, gamma, beta, torch.rand(8), axis=1),
    ]
    assert [y.dtype for y in outputs] == [torch.bfloat16] * 3


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to read the checkout")
def test_source_revision_names_the_checkout_commit_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit of this checkout (editable install); None for a copy outside a checkout."""
    package = Path(bn.__file__).resolve().parent
    head = subprocess.run(
        ["git", "-C", str(package), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    revision = bench.source_revision()
    if head and package.parent.name == "src":  # tests run from the source checkout
        assert revision is not None and revision.split("-")[0] == head
    copy = tmp_path / "batchnorm" / "__init__.py"
    copy.parent.mkdir()
    copy.write_text("")
    monkeypatch.setattr(bench.bn, "__file__", str(copy))
    assert bench.source_revision() is None


def test_compile_run_times_compiled_candidates_and_their_compile_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--compile``: torch.compile'd ours and native, a compile time per candidate.

    The oracle for the rows' arithmetic is the quick run's test above; here what --compile
    adds (a small fixed case: compiling is slow).
    """
    argv = ["bench", "--compile", "--shapes", "4x8x2x2", "--layouts", "NCHW", "--options"]
    argv += ["plain,tf_keras", "--modes", "train_fwdbwd", "--rounds", "2", "--quiet"]
    assert main([*argv, "--out-dir", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    report = strict_json(tmp_path / "bench.json")
    assert report["config"]["compile"] is True
    rows = {row["candidate"]: row for row in report["rows"]}
    assert sorted(rows) == ["copy", "native", "plain"]
    for name in ("native", "plain"):
        assert rows[name]["compiled"] is True and rows[name]["compile_s"] > 0
        assert rows[name]["saved_bytes"] is None  # not counted when compiled
    assert "torch.compile'd" in out and "compile s" in out
    assert any("tf_keras" in note and "--compile" in note for note in report["notes"])
