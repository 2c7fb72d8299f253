"""The `ood-perception` entry point: discovered subcommands, help, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ood_perception import cli


def test_help_lists_every_command_module(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli._command_modules():  # module object_bank -> subcommand object-bank
        assert f"    {name.replace('_', '-')}" in out, f"subcommand {name} missing from --help"
    assert {"synth", "train", "evaluate", "export", "replay", "run", "demo"} <= set(cli._command_modules())


def test_no_command_prints_help_and_returns_2(capsys):
    assert cli.main([]) == 2
    assert "usage: ood-perception" in capsys.readouterr().out


def test_console_script_runs_in_a_fresh_interpreter():
    out = subprocess.run([sys.executable, "-m", "ood_perception.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().startswith("ood-perception ")


def test_help_does_not_import_torch_and_a_broken_task_says_so() -> None:
    """``--help`` imports no task module (torch stays out); a task that cannot be imported is
    reported in one line when asked for, not silently dropped from the list."""
    import subprocess
    import sys

    code = ("import sys; from ood_perception import cli; p = cli.build_parser(); "
            "print('torch' in sys.modules, 'rclpy' in sys.modules, 'sklearn' in sys.modules, 'open3d' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False", "False"]
    from ood_perception.commands import train as train_cmd

    train_cmd.TASKS["broken"] = ("ood_perception.trainer.no_such_module", "a task whose module is missing")
    try:
        assert cli.main(["train", "broken"]) == 1
    finally:
        del train_cmd.TASKS["broken"]


def test_evaluate_command_defaults_match_the_trainer() -> None:
    """The evaluate command keeps its argument defaults beside the parser (so --help imports no
    torch or scikit-learn); they must stay the trainer's."""
    from ood_perception.commands import evaluate as cmd
    from ood_perception.trainer import evaluate as ev

    assert cmd.DEFAULT_SCORERS == ev.DEFAULT_SCORERS and cmd.RESOLUTIONS == ev.RESOLUTIONS
