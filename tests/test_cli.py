"""The command line: ``python -m batchnorm`` and ``batchnorm.cli.__main__.main``.

Oracles: the demo's table is parsed back and checked for every variant and well-formed numbers;
``--seed`` is checked by running the same seed twice (the numbers must agree) and argparse's
behaviour by its exit statuses and messages.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import batchnorm.cli
from batchnorm.cli.__main__ import main

VARIANTS = ("MLP", "MLP + BN", "CNN", "CNN + BN")
ROW = re.compile(
    r"^(?P<variant>MLP|MLP \+ BN|CNN|CNN \+ BN) +(?P<loss>\d+\.\d{4}|nan) +"
    r"(?P<accuracy>\d+\.\d)% +(?P<epochs>>?\d+) +(?P<seconds>\d+\.\d) s$"
)


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """The demo's table rows by variant; fails unless each variant has exactly one row."""
    rows = [match.groupdict() for match in map(ROW.match, text.splitlines()) if match]
    by_variant = {row["variant"]: row for row in rows}
    assert len(rows) == len(by_variant), f"a variant appears twice:\n{text}"
    assert sorted(by_variant) == sorted(VARIANTS), f"variants {sorted(by_variant)} in:\n{text}"
    header = next(line for line in text.splitlines() if line.startswith("variant"))
    for column in ("final train loss", "test accuracy", "epochs to 95%", "wall time"):
        assert column in header
    return by_variant


def check_row(row: dict[str, str], epochs: int) -> None:
    loss = float(row["loss"])
    assert loss >= 0.0  # cross-entropy; "nan" would fail here too
    assert 0.0 <= float(row["accuracy"]) <= 100.0
    reached = row["epochs"]
    assert reached == f">{epochs}" or 1 <= int(reached) <= epochs
    assert float(row["seconds"]) >= 0.0


def test_module_entry_point_runs_the_demo() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "batchnorm", "demo", "--epochs", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for row in parse_table(completed.stdout).values():
        check_row(row, epochs=1)
    assert "epoch" not in completed.stderr  # --quiet: no progress lines


def test_main_in_process_shows_progress_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "2", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    for row in parse_table(out).values():
        check_row(row, epochs=2)
    progress = [line.split(" epoch ") for line in err.splitlines() if " epoch " in line]
    for variant in VARIANTS:
        epochs = [rest.split()[0] for name, rest in progress if name.strip() == variant]
        assert epochs == ["1/2", "2/2"], err


def test_same_seed_gives_the_same_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    def numbers(seed: str) -> list[tuple[str, str, str]]:
        assert main(["demo", "--epochs", "1", "--seed", seed, "--quiet"]) == 0
        rows = parse_table(capsys.readouterr().out)
        return [(v, rows[v]["loss"], rows[v]["accuracy"]) for v in VARIANTS]

    assert numbers("7") == numbers("7")


def test_console_script_points_at_main() -> None:
    (script,) = metadata.entry_points(group="console_scripts", name="batchnorm")
    assert script.load() is main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--help"], "demo"), (["demo", "--help"], "--epochs")],
    ids=["top", "demo"],
)
def test_help_exits_zero(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert expected in out
    if argv[0] == "demo":
        assert "--seed" in out
        assert "--quiet" in out


def test_unknown_command_fails_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err
    assert "frobnicate" in err


def test_unknown_command_fails_from_the_shell() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "batchnorm", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode != 0
    assert "frobnicate" in completed.stderr
    assert completed.stdout == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["demo", "--epochs", "0"], "--epochs: '0' is not a positive integer"),
        (["demo", "--seed", "-3"], "--seed: '-3' is not a non-negative integer"),
        (["demo", "--epochs", "many"], "--epochs: 'many' is not a positive integer"),
    ],
    ids=["no-command", "zero-epochs", "negative-seed", "non-integer"],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_imports_only_the_public_package() -> None:
    """style.md: the CLI dogfoods the public API, so it imports ``batchnorm`` and nothing below."""
    cli_dir = Path(batchnorm.cli.__file__).parent
    files = [*cli_dir.glob("*.py"), cli_dir.parent / "__main__.py"]
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module == "batchnorm":
                # `from batchnorm import name`: only names the package exports.
                imported.update(f"batchnorm.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    ours = {name for name in imported if name.split(".")[0] == "batchnorm"}
    assert "batchnorm" in ours
    allowed = {"batchnorm"} | {f"batchnorm.{name}" for name in batchnorm.__all__}
    allowed |= {name for name in ours if name.startswith("batchnorm.cli")}
    assert ours <= allowed, f"the CLI imports {sorted(ours - allowed)}"
