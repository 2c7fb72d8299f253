"""The command line's front door: clean ``--help`` texts and one-line errors for user mistakes.

Every ``--help`` (each command and each ``train`` task) must read as plain text: no
reStructuredText/Markdown markup from the docstrings it reuses, no default stated twice. Every user
mistake below must end in exactly one line on stderr (no traceback) and a documented exit code, and
a failed replay must not leave an empty output folder behind (nor touch one the user had).
"""

from __future__ import annotations

import argparse
import importlib.util
import re

import pytest

from ood_perception import cli
from ood_perception.commands._help import plain, task_summary

MARKUP = re.compile(r"`|:(?:mod|func|class|meth|attr|data|obj|exc):|::\s*$", re.MULTILINE)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser and every train task's (built as ``train TASK`` builds it), by name."""
    from ood_perception.commands import train as train_cmd

    top = cli.build_parser()
    found: dict[str, argparse.ArgumentParser] = {}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    for task in train_cmd.TASKS:
        found[f"train {task}"] = train_cmd.task_parser(task, train_cmd.task_module(task))
    return found


PARSERS = _parsers()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def test_plain_drops_markup():
    assert plain("``ood-perception train X``: see :mod:`ood_perception.replay.scoring` and "
                 ":func:`~ood_perception.pipeline.fusion.upsample_class_map`::") == (
        "'ood-perception train X': see ood_perception.replay.scoring and upsample_class_map:")
    assert plain("writes ``metrics.json`` (:mod:`.trainer`) from `ood-perception synth` output") == (
        "writes metrics.json (trainer) from 'ood-perception synth' output")
    assert task_summary("``ood-perception train distill``: dark-knowledge distillation.\n\nMore.", "x") == (
        "dark-knowledge distillation")


def test_every_command_and_task_is_covered():
    assert {"synth", "train", "evaluate", "export", "replay", "run", "demo"} <= set(PARSERS)
    assert {"train segmentation", "train recognition", "train distill"} <= set(PARSERS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_is_plain_text_with_each_default_once(name):
    parser = PARSERS[name]
    text = parser.format_help()
    assert not MARKUP.search(text), f"{name} --help shows markup: {MARKUP.search(text).group(0)!r}"
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.help or action.help == argparse.SUPPRESS:
            continue
        shown = formatter._expand_help(action)
        assert shown.count("(default") <= 1 and "(default: None)" not in shown, f"{name} {action.dest}: {shown!r}"
    assert len(text.splitlines()) > 3


def test_synth_refusal_names_the_option(tmp_path, capsys):
    (tmp_path / "dataset.yaml").write_text("kind: synthetic\n")
    assert cli.main(["synth", "--out", str(tmp_path), "--sequences", "1", "--frames", "1", "--quiet"]) == 1
    err = one_line_error(capsys)
    assert "--overwrite" in err and "pass overwrite" not in err and str(tmp_path) in err


def test_replay_of_a_folder_that_is_no_bag(tmp_path, capsys):
    folder = tmp_path / "holiday_photos"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a bag\n")
    out = tmp_path / "new" / "out"
    assert cli.main(["replay", str(folder), "--out", str(out), "--no-progress"]) == 1
    err = one_line_error(capsys)
    assert "not a rosbag2 bag" in err and "metadata.yaml" in err and "Expected metadata" not in err
    assert not (tmp_path / "new").exists(), "a failed replay left the folders it created"


def test_failed_replay_keeps_a_folder_the_user_had(tmp_path, capsys):
    folder = tmp_path / "empty_bag"
    folder.mkdir()
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    assert cli.main(["replay", str(folder), "--out", str(mine), "--no-progress"]) == 1
    one_line_error(capsys)
    assert (mine / "sub").is_dir()
    nested = tmp_path / "mine" / "sub" / "a" / "b"
    assert cli.main(["replay", str(folder), "--out", str(nested), "--no-progress"]) == 1
    one_line_error(capsys)
    assert (mine / "sub").is_dir() and not (mine / "sub" / "a").exists()


def test_replay_with_an_unavailable_backend_is_one_line_exit_2(tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the backend would be available")
    from replay_bags import write_drive_bag

    bag = write_drive_bag(tmp_path / "bag", frames=2)
    out = tmp_path / "out"
    assert cli.main(["replay", str(bag), "--out", str(out), "--backend", "tensorrt", "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("ood-perception replay: error:") and "tensorrt" in err.lower()
    assert not out.exists()


def test_demo_model_error_names_no_issue_number(tmp_path):
    from ood_perception.app.demo import DemoError, check_model

    with pytest.raises(DemoError) as exc:
        check_model(tmp_path / "no_model_here")
    msg = str(exc.value)
    assert "\n" not in msg and "issue" not in msg and "--model DIR" in msg and "no_model_here" in msg


def test_replay_refuses_to_replace_earlier_results_without_overwrite(tmp_path, capsys):
    from replay_bags import write_drive_bag

    bag = write_drive_bag(tmp_path / "bag", frames=2)
    out = tmp_path / "out"
    assert cli.main(["replay", str(bag), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    before = (out / "metrics.json").read_bytes()
    (out / "notes.txt").write_text("mine\n")
    assert cli.main(["replay", str(bag), "--out", str(out), "--no-progress"]) == 1
    err = one_line_error(capsys)
    assert "--overwrite" in err and "metrics.json" in err and str(out) in err
    assert (out / "metrics.json").read_bytes() == before
    assert cli.main(["replay", str(bag), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine\n", "--overwrite replaced only the replay's own files"


def test_unknown_or_abbreviated_options_are_errors_of_the_command(tmp_path, capsys):
    for argv, command in ((["replay", "bag", "--out", str(tmp_path), "--bogus"], "replay"),
                          (["replay", "bag", "--ou", str(tmp_path)], "replay"),  # no abbreviations
                          (["train", "segmentation", "--data", str(tmp_path), "--bogus"], "train segmentation"),
                          (["--bogus"], None)):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        prefix = f"ood-perception {command}: error:" if command else "ood-perception: error:"
        assert err.startswith(prefix), err


def test_evaluate_checks_its_paths_before_loading_torch(tmp_path, capsys):
    import subprocess
    import sys

    code = ("import sys; from ood_perception import cli; rc = cli.main(['evaluate', sys.argv[1], '--data', sys.argv[2]]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nothere.pt"), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout.strip() == "False", (r.stdout, r.stderr)
    assert r.stderr.strip() == f"ood-perception evaluate: error: checkpoint not found: {tmp_path / 'nothere.pt'}"


def test_evaluate_decisions_arguments_are_checked_before_any_work(tmp_path, capsys):
    """--decisions needs an exported model directory, --params only goes with it: one line each, at once."""
    from ood_perception import cli

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    base = ["evaluate", str(ckpt), "--data", str(tmp_path)]
    assert cli.main([*base, "--params", "vehicle.yaml"]) == 1
    assert capsys.readouterr().err.strip() == ("ood-perception evaluate: error: --params is for --decisions (the node's "
                                               "decisions); give --decisions MODEL_DIR too")
    assert cli.main([*base, "--decisions", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("no model.json there (give an exported model directory)") and "\n" not in err
    assert cli.main([*base, "--decisions", "default", "--params", str(tmp_path / "none.yaml")]) == 1
    assert capsys.readouterr().err.strip().endswith(f"--params not found: {tmp_path / 'none.yaml'}")


def test_params_lists_each_nodes_parameters_with_default_and_description(capsys):
    from ood_perception import cli

    assert cli.main(["params", "fusion_segmentation", "--grep", "min_visible"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fusion_segmentation (1 parameter matching 'min_visible'):")
    assert "  object.min_visible = 0.0\n" in out and "seen through a gap" in out
    assert cli.main(["params"]) == 0
    out = capsys.readouterr().out
    assert "action_recognition (" in out and "  region_threshold = NaN\n" in out and "  model_dir = ''\n" in out
    # a unique start of a node's name is enough; anything else is one line naming the nodes
    assert cli.main(["params", "fusion", "--grep", "location_floor"]) == 0
    assert "  object.location_floor = 0.5\n" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["params", "xyz"])
    assert e.value.code == 2 and "unknown node 'xyz'; the nodes are fusion_segmentation" in capsys.readouterr().err
