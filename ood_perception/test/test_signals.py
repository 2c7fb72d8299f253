"""SIGTERM and SIGINT (issue 14 item 6): temporaries removed on SIGTERM; a replay stopped by
Ctrl-C or SIGTERM keeps its results up to the stop; a second signal stops at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from replay_bags import write_drive_bag
from test_replay_engine import RednessBackend, dataset_config, read_outputs

from ood_perception import cli
from ood_perception.replay import run as run_mod

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_removes_the_temporary_model_dir(tmp_path):
    """The case: ``export`` (atomic_dir -> DIR/.model.tmp-*) killed with SIGTERM while writing.
    Before: the process died on the spot and left .model.tmp-* behind. Now: SIGTERM unwinds like
    Ctrl-C, the temporary folder is removed, exit code 143 with one line 'terminated (SIGTERM)'."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        import ood_perception.commands.export as ex
        from ood_perception import cli
        from ood_perception.atomic import atomic_dir

        def slow_export(args):
            with atomic_dir(Path(args.out)) as tmp:
                (tmp / "model.json").write_text("{}")
                print("ready", flush=True)
                time.sleep(120)
            return 0

        ex.handler = slow_export
        sys.exit(cli.main(["export", "ckpt.pt", "--out", sys.argv[1]]))
    """)
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"  # waits until the temporary folder exists
        assert len(list(tmp_path.glob(".model.tmp-*"))) == 1
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert rc == 143 and proc.stderr.read().strip() == "terminated (SIGTERM)"
    assert list(tmp_path.iterdir()) == []  # neither the temporary nor a half model


class SignallingBackend(RednessBackend):
    """Sends ``signals`` to this process while the model runs on frame ``at`` (0-based)."""

    def __init__(self, at: int, signals: tuple[int, ...]) -> None:
        super().__init__()
        self.at, self.signals, self.calls = at, signals, 0

    def infer(self, inputs):
        if self.calls == self.at:
            for s in self.signals:
                os.kill(os.getpid(), s)
        self.calls += 1
        return super().infer(inputs)


def _pipeline(backend):
    from ood_perception.pipeline import AlertConfig, FusionConfig, FusionPipeline

    cfg = FusionConfig(min_region_pixels=20, alert=AlertConfig(raise_k=2, raise_n=3, clear_frames=2, cooldown_s=0.0))
    return FusionPipeline(backend, cfg)


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopped_replay_keeps_results_up_to_the_stop(tmp_path, monkeypatch, capsys, sig, rc):
    """The case: Ctrl-C (or SIGTERM) while frame 3 of the first of two bags is processed.
    Before: every partial result was discarded. Now: the replay stops after that frame, the output
    bag holds frames 0..3, metrics.json says "interrupted": true, the second bag is listed as not
    replayed, no temporaries are left, exit code 130 (143) and a line saying so."""
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))  # SIG_IGN under nohup
    backend = SignallingBackend(at=3, signals=(sig,))
    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: _pipeline(backend))
    cfg = tmp_path / "dataset.yaml"
    dataset_config().write_yaml(cfg)
    bags = [write_drive_bag(tmp_path / f"bag{i}", frames=10) for i in range(2)]
    out = tmp_path / "out"
    code = cli.main(["replay", *map(str, bags), "--out", str(out), "--dataset-config", str(cfg), "--serial", "--no-progress"])
    err = capsys.readouterr().err
    assert code == rc
    assert f"interrupted ({signal.Signals(sig).name}) in {bags[0]} after 4 frames" in err
    per_bag = json.loads((out / "bag0/metrics.json").read_text())
    assert per_bag["interrupted"] is True and per_bag["bags"][0]["frames"] == 4
    assert [f["index"] for f in per_bag["bags"][0]["per_frame"]] == [0, 1, 2, 3]
    assert len(read_outputs(out / "bag0/output")["alerts"]) == 4
    pooled = json.loads((out / "metrics.json").read_text())
    assert pooled["interrupted"] is True and pooled["info"]["not_replayed"] == [str(bags[1])]
    assert not (out / "bag1").exists() and not list(out.rglob(".*tmp*"))
    assert f"<b>Interrupted</b> ({signal.Signals(sig).name})" in (out / "bag0/report.html").read_text()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def test_second_signal_stops_at_once_without_results(tmp_path, monkeypatch, capsys):
    """Two Ctrl-C in a row: no waiting for the frame in flight; the partial output is removed."""
    backend = SignallingBackend(at=2, signals=(signal.SIGINT, signal.SIGINT))
    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: _pipeline(backend))
    bag = write_drive_bag(tmp_path / "bag", frames=10)
    out = tmp_path / "out"
    code = cli.main(["replay", str(bag), "--out", str(out), "--serial", "--no-progress"])
    assert code == 130 and capsys.readouterr().err.strip().endswith("interrupted")
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("sig, rc, line", [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")])
def test_replay_workers_stopped_leave_no_temporaries(tmp_path, sig, rc, line):
    """The case: ``replay --workers 2`` (default model) stopped by SIGTERM to the command, or Ctrl-C
    to its process group, while both workers write their staged ``.bagN.tmp-*/.output.tmp-*``. Before: SIGTERM killed the
    workers on the spot and their temporaries stayed. Now: the workers ignore Ctrl-C (the parent
    decides), unwind on the pool's SIGTERM and remove their temporaries; one line, exit 143 / 130."""
    bags = [write_drive_bag(tmp_path / f"bag{i}", frames=200) for i in range(2)]
    out = tmp_path / "out"
    script = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "from ood_perception import cli; sys.exit(cli.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script, "replay", *map(str, bags), "--out", str(out), "--workers", "2",
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob(".bag*.tmp-*/.output.tmp-*"))) < 2:  # both workers are writing (staged outputs)
            assert proc.poll() is None and time.monotonic() < deadline, "the workers never started writing"
            time.sleep(0.2)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole foreground process group
        else:
            proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == rc and proc.stderr.read().strip().splitlines()[-1] == line
    assert not list(out.rglob(".*tmp*"))
