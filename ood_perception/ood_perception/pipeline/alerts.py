"""The alert state machine: per-frame anomaly evidence -> CLEAR / WARNING / ALERT / DEGRADED.

One decision per processed frame (CLEAR included), with

* **k-of-n raising**: ALERT when at least ``raise_k`` of the last ``raise_n`` judged frames had an
  anomalous region (a region passing the size filter, decided by the caller); WARNING while some
  evidence is in the window but not enough;
* **hysteresis**: an ALERT clears only after ``clear_frames`` consecutive frames without evidence;
* **cooldown**: an ALERT is held at least ``cooldown_s`` seconds of stamp time after it was raised,
  so one flickering object yields one alert, not a train of them;
* **DEGRADED** whenever the frame cannot be fully judged (a sensor stale, missing or unusable,
  streams that do not pair, the model failed). DEGRADED wins over every other level, ALERT
  included, so a consumer reading only the level learns that the judgement is degraded: while an
  anomaly confirmed on the remaining evidence stands, the decision is DEGRADED with
  ``alert_standing`` set, a description that starts with :data:`ALERT_STANDING` and (in the
  pipelines) the regions kept. The k-of-n history keeps running on the remaining evidence, so
  the level returns to ALERT (not WARNING) as soon as the frame is fully judged again.

The defaults (3 of 5, clear after 5, 1 s cooldown) are our engineering choice for 10-30 Hz
sensors, not taken from a paper.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

CLEAR, WARNING, ALERT, DEGRADED = 0, 1, 2, 3
LEVEL_NAMES = {CLEAR: "CLEAR", WARNING: "WARNING", ALERT: "ALERT", DEGRADED: "DEGRADED"}

#: How the description of a DEGRADED decision starts while a confirmed anomaly stands.
ALERT_STANDING = "ALERT standing"


#: The k-of-n persistence used when neither parameters nor the model's calibration give one.
DEFAULT_PERSISTENCE = (3, 5)


@dataclass(frozen=True)
class AlertConfig:
    """Parameters of :class:`AlertStateMachine` (see the module docstring).

    ``raise_k = raise_n = 0`` means "not set": the fusion pipeline then takes the persistence the
    model was calibrated with (``model.json`` ``decision.alert``), else :data:`DEFAULT_PERSISTENCE`
    (:meth:`resolved`); the state machine itself needs set values.
    """

    raise_k: int = 3
    raise_n: int = 5
    clear_frames: int = 5
    cooldown_s: float = 1.0

    @property
    def persistence_set(self) -> bool:
        return not (self.raise_k == 0 and self.raise_n == 0)

    def resolved(self, calibrated: dict | None = None) -> tuple[AlertConfig, str]:
        """This config with an unset persistence filled from ``calibrated`` (``decision.alert``)
        or the default; and where k-of-n came from (``parameter``, ``model.json``, ``default``)."""
        if self.persistence_set:
            return self, "parameter"
        cal = calibrated or {}
        if cal.get("raise_k") and cal.get("raise_n"):
            return replace(self, raise_k=int(cal["raise_k"]), raise_n=int(cal["raise_n"])), "model.json"
        return replace(self, raise_k=DEFAULT_PERSISTENCE[0], raise_n=DEFAULT_PERSISTENCE[1]), "default"

    def __post_init__(self) -> None:
        if not self.persistence_set:
            pass  # resolved by the fusion pipeline (see the class docstring)
        elif self.raise_n < 1:
            raise ValueError(f"raise_n must be >= 1, got {self.raise_n}")
        elif not 1 <= self.raise_k <= self.raise_n:
            raise ValueError(f"raise_k must be in 1..raise_n={self.raise_n}, got {self.raise_k}")
        if self.clear_frames < 1:
            raise ValueError(f"clear_frames must be >= 1, got {self.clear_frames}")
        if not self.cooldown_s >= 0:
            raise ValueError(f"cooldown_s must be >= 0, got {self.cooldown_s}")


@dataclass(frozen=True)
class AlertDecision:
    """The level of one frame and why; ``alert_standing``: a confirmed anomaly stands (level ALERT,
    or DEGRADED when the frame is not fully judged)."""

    level: int
    description: str
    alert_standing: bool = False

    @property
    def name(self) -> str:
        """The level's name (CLEAR, WARNING, ALERT, DEGRADED)."""
        return LEVEL_NAMES[self.level]


# AlertStateMachine._advance's steps
_BELOW, _RAISED, _HELD, _CLEARED = range(4)


class AlertStateMachine:
    """k-of-n raising, hysteresis clearing, cooldown; see the module docstring."""

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = config or AlertConfig()
        if not self.config.persistence_set:
            raise ValueError("AlertStateMachine needs raise_k and raise_n >= 1 (0 = 'the calibrated persistence' "
                             "is resolved by the fusion pipeline: AlertConfig.resolved)")
        self._window: deque[bool] = deque(maxlen=self.config.raise_n)
        self._alert = False
        self._raised_at = 0.0
        self._negative_run = 0

    @property
    def alerting(self) -> bool:
        """An ALERT is standing."""
        return self._alert

    def reset(self) -> None:
        """Forget history (after a clock jump or a restart of the input)."""
        self._window.clear()
        self._alert = False
        self._negative_run = 0

    def _advance(self, stamp: float, anomalous: bool) -> tuple[int, int, int]:
        """The state transition of one judged frame: (which step, anomalous frames in the window,
        frames without anomaly that cleared a standing ALERT)."""
        cfg = self.config
        self._window.append(anomalous)
        hits = sum(self._window)
        if self._alert:
            self._negative_run = 0 if anomalous else self._negative_run + 1
            if self._negative_run >= cfg.clear_frames and stamp - self._raised_at >= cfg.cooldown_s:
                cleared_after, self._negative_run = self._negative_run, 0
                self._alert = False
                self._window.clear()
                return _CLEARED, hits, cleared_after
            return _HELD, hits, 0
        if hits >= cfg.raise_k:
            self._alert = True
            self._raised_at = stamp
            self._negative_run = 0
            return _RAISED, hits, 0
        return _BELOW, hits, 0

    def step(self, stamp: float, anomalous: bool) -> bool:
        """Feed one judged frame without building its :class:`AlertDecision` (calibration replays
        this machine millions of times); True when the frame's level is ALERT. Same state as
        :meth:`update`."""
        return self._advance(stamp, bool(anomalous))[0] in (_HELD, _RAISED)

    def update(self, stamp: float, anomalous: bool | None, degraded: str | None = None) -> AlertDecision:
        """Feed one frame.

        Args:
            stamp: the frame's stamp [s] (for the cooldown).
            anomalous: the frame has an anomalous region; None when it could not be scored at all.
            degraded: why the frame is not fully judged (e.g. ``"lidar stale for 0.8 s"``), or None.
        """
        cfg = self.config
        if anomalous is None:
            reason = degraded or "frame could not be scored"
            if self._alert:
                return AlertDecision(DEGRADED, f"{ALERT_STANDING} (not re-judged on this frame); degraded: {reason}", True)
            return AlertDecision(DEGRADED, reason)
        step, hits, cleared_after = self._advance(stamp, bool(anomalous))
        evidence = f"{hits} of last {len(self._window)} frames anomalous"
        if step == _CLEARED:
            decision = AlertDecision(CLEAR, f"cleared after {cleared_after} frames without anomaly")
        elif step == _HELD:
            decision = AlertDecision(ALERT, evidence, True)
        elif step == _RAISED:
            decision = AlertDecision(ALERT, f"raised: {evidence}", True)
        elif hits > 0:
            decision = AlertDecision(WARNING, f"{evidence} (need {cfg.raise_k})")
        else:
            decision = AlertDecision(CLEAR, "no anomalous region")
        if degraded:
            if decision.level == ALERT:
                return AlertDecision(DEGRADED, f"{ALERT_STANDING} ({decision.description}); degraded: {degraded}", True)
            return AlertDecision(DEGRADED, f"{degraded}; remaining modality: {decision.description}")
        return decision
