"""The alert state machine: k-of-n raising, hysteresis, cooldown, DEGRADED never CLEAR."""

from __future__ import annotations

import numpy as np
import pytest

from ood_perception.pipeline.alerts import (
    ALERT,
    ALERT_STANDING,
    CLEAR,
    DEGRADED,
    WARNING,
    AlertConfig,
    AlertStateMachine,
)


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


def test_degraded_modality_never_clear_and_never_alert():
    """Issue 14 item 4: a standing ALERT does not hide a lost sensor. The level reads DEGRADED
    (a consumer reading only the level learns it), the description says the ALERT stands, and
    the level is ALERT again as soon as the frame is fully judged."""
    sm = AlertStateMachine(AlertConfig(raise_k=1, raise_n=1, clear_frames=2, cooldown_s=0))
    d = sm.update(0.0, False, "lidar stale for 0.8 s")
    assert d.level == DEGRADED and "lidar stale" in d.description and not d.alert_standing
    d = sm.update(0.1, True, "lidar stale for 0.9 s")
    assert d.level == DEGRADED and d.alert_standing
    assert d.description.startswith(ALERT_STANDING) and d.description.endswith("degraded: lidar stale for 0.9 s")
    d = sm.update(0.2, True)  # the LiDAR is back: ALERT (confirmed history kept), not WARNING
    assert d.level == ALERT and d.alert_standing
    d = sm.update(0.3, None, "model failure: boom")  # unscored while an ALERT stands
    assert d.level == DEGRADED and d.alert_standing and "model failure: boom" in d.description
    sm.reset()
    assert not sm.alerting and sm.update(0.4, False).level == CLEAR


def test_every_degraded_input_reads_degraded_whatever_the_history():
    """No sequence of evidence makes a degraded frame read anything but DEGRADED."""
    rng = np.random.default_rng(0)
    sm = AlertStateMachine(AlertConfig(raise_k=2, raise_n=3, clear_frames=2, cooldown_s=0.2))
    for i in range(500):
        ev = [None, False, True][int(rng.integers(3))]
        deg = "camera stale" if rng.random() < 0.3 else None
        d = sm.update(i * 0.1, ev, deg)
        if deg is not None or ev is None:
            assert d.level == DEGRADED
        assert d.alert_standing == sm.alerting


@pytest.mark.parametrize(
    "kw", [{"raise_k": 0}, {"raise_k": 6, "raise_n": 5}, {"raise_n": 0}, {"clear_frames": 0}, {"cooldown_s": -1}]
)
def test_bad_config(kw):
    with pytest.raises(ValueError):
        AlertConfig(**kw)


@pytest.mark.parametrize("kw", [dict(raise_k=3, raise_n=5, clear_frames=3, cooldown_s=0.0),
                                dict(raise_k=2, raise_n=3, clear_frames=2, cooldown_s=0.5),
                                dict(raise_k=1, raise_n=1, clear_frames=1, cooldown_s=0.0)])
def test_step_follows_update(kw):
    """`step` (calibration's lean path) gives ALERT on exactly the frames `update` does."""
    rng = np.random.default_rng(3)
    seq = [bool(x) for x in rng.random(400) < 0.35]
    a, b = AlertStateMachine(AlertConfig(**kw)), AlertStateMachine(AlertConfig(**kw))
    levels = [a.update(0.1 * i, e).level for i, e in enumerate(seq)]
    steps = [b.step(0.1 * i, e) for i, e in enumerate(seq)]
    assert steps == [lv == ALERT for lv in levels] and any(steps) and not all(steps)
