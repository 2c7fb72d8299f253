"""The alert timeline: one entry per judged frame (stamp, level, frame score, anomalies in view), and
its plot.

:class:`TimelineEntry` is what :meth:`ood_perception.evaluation.AlertEvaluator.timeline` returns and
what a report plots; :func:`render_timeline_png` draws one sequence's timeline (frame score over
time on the level-coloured background, anomaly-in-view spans shaded, the threshold dashed) and
returns PNG bytes, ready to embed as base64 in an HTML report.

matplotlib is imported inside :func:`render_timeline_png` only: it is a plotting dependency of the
report, heavy to import (~0.3 s), and nothing else in ``evaluation`` (used by training loops and
replay, which may never plot) needs it. We draw on a bare ``Figure`` with the Agg canvas, so the
process-wide pyplot backend is left alone.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Alert levels of ``ood_perception_msgs/OodAlert`` (the pipeline's alert state machine uses the same).
CLEAR, WARNING, ALERT, DEGRADED = 0, 1, 2, 3
LEVEL_NAMES: dict[int, str] = {CLEAR: "CLEAR", WARNING: "WARNING", ALERT: "ALERT", DEGRADED: "DEGRADED"}
#: Background colours of the levels in the plot.
LEVEL_COLORS: dict[int, str] = {CLEAR: "#e8f5e9", WARNING: "#fff3cd", ALERT: "#f8d7da", DEGRADED: "#d6d8db"}

__all__ = ["ALERT", "CLEAR", "DEGRADED", "LEVEL_NAMES", "WARNING", "TimelineEntry", "render_timeline_png"]


@dataclass(frozen=True)
class TimelineEntry:
    """One judged frame on the alert timeline.

    Attributes:
        sequence: the sequence / bag the frame belongs to.
        stamp: seconds (the frame's stamp).
        level: the alert level (CLEAR, WARNING, ALERT, DEGRADED).
        score: the frame score (``OodAlert.score``, higher = more anomalous); None when not scored.
        anomaly_pixels: labelled anomaly pixels in the frame.
        frame_label: ``"positive"`` (>= ``frame_min_pixels`` anomaly pixels), ``"negative"`` (none)
            or ``"excluded"`` (1 .. ``frame_min_pixels`` - 1, or only anomaly types the model saw in
            training), as the frame-level metrics use it.
        objects_in_view: keys (``semantic | instance << 16``) of the anomaly objects in view
            (covering >= ``object_min_pixels`` pixels), increasing.
    """

    sequence: str
    stamp: float
    level: int
    score: float | None
    anomaly_pixels: int
    frame_label: str
    objects_in_view: tuple[int, ...] = field(default_factory=tuple)

    @property
    def level_name(self) -> str:
        """CLEAR, WARNING, ALERT or DEGRADED."""
        return LEVEL_NAMES.get(self.level, str(self.level))

    @property
    def anomaly_in_view(self) -> bool:
        """Some anomaly object covers >= ``object_min_pixels`` pixels in this frame."""
        return bool(self.objects_in_view)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``level_name`` and ``anomaly_in_view`` included)."""
        return {"sequence": self.sequence, "stamp": self.stamp, "level": self.level, "level_name": self.level_name,
                "score": self.score, "anomaly_pixels": self.anomaly_pixels, "frame_label": self.frame_label,
                "anomaly_in_view": self.anomaly_in_view, "objects_in_view": list(self.objects_in_view)}


def _spans(stamps: Sequence[float], flags: Sequence[bool], end: float) -> list[tuple[float, float]]:
    """(start, stop) stamp spans of consecutive True flags; each frame lasts until the next stamp."""
    out: list[tuple[float, float]] = []
    start = None
    for k, f in enumerate(flags):
        if f and start is None:
            start = stamps[k]
        if start is not None and (not f or k == len(flags) - 1):
            stop = stamps[k] if not f else end
            out.append((start, stop))
            start = None
    return out


def render_timeline_png(entries: Sequence[TimelineEntry], threshold: float | None = None,
                        title: str | None = None, width_in: float = 10.0, dpi: int = 90) -> bytes:
    """PNG bytes of one sequence's alert timeline.

    Args:
        entries: the frames of **one** sequence (sorted here by stamp); time axis = seconds
            from the first entry.
        threshold: the frame-score threshold, drawn dashed when given.
        title: figure title (default: the sequence name).
        width_in, dpi: figure width in inches and resolution.

    Raises:
        ValueError: no entries, or entries of several sequences.
    """
    if not entries:
        raise ValueError("render_timeline_png: no timeline entries")
    seqs = sorted({e.sequence for e in entries})
    if len(seqs) > 1:
        raise ValueError(f"render_timeline_png draws one sequence, got {len(seqs)}: {seqs[:5]}")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    es = sorted(entries, key=lambda e: e.stamp)
    t0 = es[0].stamp
    t = [e.stamp - t0 for e in es]
    step = (t[-1] - t[0]) / max(len(t) - 1, 1) if len(t) > 1 else 0.1
    end = t[-1] + step
    fig = Figure(figsize=(width_in, 2.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for level, color in LEVEL_COLORS.items():
        for a, b in _spans(t, [e.level == level for e in es], end):
            ax.axvspan(a, b, ymin=0.0, ymax=0.12, color=color, lw=0)
            if level != CLEAR:
                ax.axvspan(a, b, ymin=0.12, ymax=1.0, color=color, alpha=0.45, lw=0)
    for a, b in _spans(t, [e.anomaly_in_view for e in es], end):
        ax.axvspan(a, b, ymin=0.88, ymax=1.0, color="#6f42c1", alpha=0.8, lw=0)
    xs = [ti for ti, e in zip(t, es, strict=True) if e.score is not None]
    ys = [e.score for e in es if e.score is not None]
    if xs:
        ax.plot(xs, ys, color="#1f3b73", lw=1.0, label="frame score")
    if threshold is not None:
        ax.axhline(threshold, color="black", ls="--", lw=0.8, label="threshold")
    ax.set_xlim(0.0, end)
    ax.set_xlabel("time [s]")
    ax.set_ylabel("frame score")
    ax.set_title(title if title is not None else seqs[0], fontsize=10, loc="right")
    handles = [Patch(color=LEVEL_COLORS[k], label=LEVEL_NAMES[k]) for k in (WARNING, ALERT, DEGRADED)]
    handles.append(Patch(color="#6f42c1", label="anomaly in view"))
    line_handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=line_handles + handles, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncol=6, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
