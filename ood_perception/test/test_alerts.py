"""The alert state machine: k-of-n raising, hysteresis, cooldown, DEGRADED never CLEAR."""

from __future__ import annotations

import pytest

from ood_perception.pipeline.alerts import ALERT, CLEAR, DEGRADED, WARNING, AlertConfig, AlertStateMachine


def run(sm, seq, dt=0.1, t0=0.0, degraded=None):
    return [sm.update(t0 + i * dt, e, degraded).level for i, e in enumerate(seq)]


def test_k_of_n_raise_and_hysteresis_clear():
    sm = AlertStateMachine(AlertConfig(raise_k=3, raise_n=5, clear_frames=3, cooldown_s=0.0))
    levels = run(sm, [0, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0])
    #                  C  W  W  W  W  A  A  A  A  A  A  A  C  C
    assert levels == [CLEAR, WARNING, WARNING, WARNING, WARNING, ALERT, ALERT, ALERT, ALERT, ALERT, ALERT, ALERT, CLEAR, CLEAR]


def test_sparse_false_positives_never_raise():
    sm = AlertStateMachine(AlertConfig(raise_k=3, raise_n=5))
    assert ALERT not in run(sm, [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0] * 3)


def test_cooldown_holds_alert():
    sm = AlertStateMachine(AlertConfig(raise_k=1, raise_n=1, clear_frames=1, cooldown_s=1.0))
    levels = run(sm, [1] + [0] * 15, dt=0.1)
    assert levels[:10] == [ALERT] * 10 and levels[10] == CLEAR  # clears at t = 1.0 s


def test_unscorable_frames_are_degraded_and_keep_history():
    sm = AlertStateMachine(AlertConfig(raise_k=2, raise_n=3, clear_frames=1, cooldown_s=0))
    assert sm.update(0.0, True).level == WARNING
    d = sm.update(0.1, None, "model failure")
    assert d.level == DEGRADED and "model failure" in d.description
    assert sm.update(0.2, True).level == ALERT


def test_degraded_modality_never_clear_but_alert_stands():
    sm = AlertStateMachine(AlertConfig(raise_k=1, raise_n=1, clear_frames=2, cooldown_s=0))
    d = sm.update(0.0, False, "lidar stale for 0.8 s")
    assert d.level == DEGRADED and "lidar stale" in d.description
    assert sm.update(0.1, True, "lidar stale").level == ALERT
    sm.reset()
    assert not sm.alerting and sm.update(0.2, False).level == CLEAR


@pytest.mark.parametrize(
    "kw", [{"raise_k": 0}, {"raise_k": 6, "raise_n": 5}, {"raise_n": 0}, {"clear_frames": 0}, {"cooldown_s": -1}]
)
def test_bad_config(kw):
    with pytest.raises(ValueError):
        AlertConfig(**kw)
