"""Replay reports: ``metrics.json`` (deterministic) and a self-contained ``report.html``.

The HTML embeds its figures as base64 PNGs (matplotlib, Agg backend), so it can be mailed or
attached to a CI run as one file: ROC curves, ID/OOD score histograms, the alert timeline, the
per-frame latency and overlays of the best and worst frames; throughput as "x real time".
Everything is written to a temporary name and renamed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ood_perception.atomic import atomic_write_text as _write
from ood_perception.evaluation import render_timeline_png

LEVEL_NAMES = ["CLEAR", "WARNING", "ALERT", "DEGRADED"]
LEVEL_COLOURS = ["#2e7d32", "#f9a825", "#c62828", "#6d6d6d"]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, with the
    usual ``0o666 & ~umask`` mode (``ood_perception.atomic.atomic_write_text``)."""

    return _write(path, text)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/Inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Atomically write ``data`` as sorted, indented JSON (byte-identical for equal data)."""
    return atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=True) + "\n")


def level_counts(frames: Sequence[Any]) -> dict[str, int]:
    """Number of frames per alert level name."""
    counts = dict.fromkeys(LEVEL_NAMES, 0)
    for f in frames:
        counts[LEVEL_NAMES[f.level]] += 1
    return counts


def frames_table(frames: Sequence[Any]) -> list[dict[str, Any]]:
    """The deterministic per-frame part of ``metrics.json`` (no wall-clock timing)."""
    return [
        {
            "index": f.index, "stamp_ns": f.stamp_ns, "bag_time_ns": f.bag_time_ns, "level": LEVEL_NAMES[f.level],
            "description": f.description, "frame_score": f.frame_score, "anomalous_fraction": f.anomalous_fraction,
            "num_regions": f.num_regions, "modalities": f.modalities, "frame_auroc": f.frame_auroc, "ood_iou": f.ood_iou,
        }
        for f in frames
    ]


def latency_summary(frames: Sequence[Any]) -> dict[str, float | None]:
    """p50/p95/max per-frame latency [ms] (conversion + pipeline)."""
    lat = np.array([f.latency_s for f in frames], float) * 1e3
    if lat.size == 0:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    return {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)), "max_ms": float(lat.max())}


# ---------------------------------------------------------------------------------- figures


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt  # lazy: matplotlib is heavy to import and only this path needs it

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib  # lazy: matplotlib is heavy to import and only this path needs it

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # lazy: matplotlib is heavy to import and only this path needs it

    return plt


def fig_roc(metrics: Any, summary: dict[str, Any]) -> str | None:
    """ROC curves of the pixel and point sets (base64 PNG) or None without both classes."""
    curves = {k: metrics.roc(k) for k in ("pixel", "point")}
    if not any(c is not None for c in curves.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    for kind, c in curves.items():
        if c is not None:
            auroc = summary[kind]["auroc"]
            fpr95 = summary[kind]["fpr95"]
            ax.plot(c[0], c[1], label=f"{kind}s: AUROC {auroc:.3f}, FPR95 {fpr95:.3f}")
    ax.axhline(0.95, ls=":", c="grey", lw=0.8)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate (ID flagged)", ylabel="true positive rate (OOD caught)", title="ROC (OOD = positive)")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def fig_histograms(metrics: Any, threshold: float | None) -> str | None:
    """ID vs OOD score histograms (pixels, and points when labelled)."""
    sets = [(k, *metrics.arrays(k)) for k in ("pixel", "point")]
    sets = [s for s in sets if s[1].size]
    if not sets:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 3.4), squeeze=False)
    for ax, (kind, s, y) in zip(axes[0], sets, strict=True):
        lo, hi = np.percentile(s, [0.1, 99.9]) if s.size > 10 else (s.min(), s.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 60)
        # one filled step patch per class (ax.hist draws a patch per bin: ~4x slower to save, same picture)
        for sel, name, colour in ((~y, "ID", "#1565c0"), (y, "OOD", "#c62828")):
            if sel.any():
                density, _ = np.histogram(s[sel], bins=bins, density=True)
                ax.stairs(density, bins, fill=True, alpha=0.6, label=f"{name} ({sel.sum()})", color=colour)
        if threshold is not None:
            ax.axvline(threshold, c="k", ls="--", lw=1, label="threshold")
        ax.set(xlabel="OOD score (higher = more anomalous)", ylabel="density", title=f"{kind} scores")
        ax.legend(fontsize=8)
    return _png(fig)


def fig_timeline(frames: Sequence[Any], threshold: float | None) -> str | None:
    """Alert level per frame over bag time, with the frame score against the threshold."""
    frame_thr = [f.threshold for f in frames if math.isfinite(getattr(f, "threshold", float("nan")))]
    if frame_thr:  # the frame score's own threshold (object decisions: the region threshold)
        threshold = float(np.median(frame_thr))
    if not frames:
        return None
    plt = _plt()
    t0 = frames[0].bag_time_ns
    t = np.array([(f.bag_time_ns - t0) * 1e-9 for f in frames])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 3.6), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    lv = np.array([f.level for f in frames])
    ax1.scatter(t, lv, c=[LEVEL_COLOURS[v] for v in lv], s=12, marker="s")
    ax1.set_yticks(range(4), LEVEL_NAMES, fontsize=7)
    ax1.set_ylim(-0.5, 3.5)
    ax1.set_title("alerts over bag time")
    ax2.plot(t, [f.frame_score for f in frames], lw=1, label="frame score")
    if threshold is not None:
        ax2.axhline(threshold, c="k", ls="--", lw=0.8, label="threshold")
    ax2.set(xlabel="bag time [s]", ylabel="score")
    ax2.legend(fontsize=7, loc="upper right")
    return _png(fig)


def fig_latency(frames: Sequence[Any], period_s: float | None = None) -> str | None:
    """Per-frame latency [ms], with the sensor period as the real-time budget when known."""
    if not frames:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 2.6))
    ax.plot([f.index for f in frames], [f.latency_s * 1e3 for f in frames], lw=0.8)
    if period_s:
        ax.axhline(period_s * 1e3, c="r", ls="--", lw=0.8, label=f"sensor period {period_s * 1e3:.0f} ms")
        ax.legend(fontsize=7)
    ax.set(xlabel="frame", ylabel="latency [ms]", title="per-frame latency (decode + pipeline)")
    return _png(fig)


def png_b64(rgb: np.ndarray) -> str:
    """An RGB uint8 image as base64 PNG."""

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError("cannot encode thumbnail")
    return base64.b64encode(buf.tobytes()).decode()


# ---------------------------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f3f3f3}.note{background:#fff8e1;border-left:4px solid #f9a825;padding:6px 10px}
.err{background:#ffebee;border-left:4px solid #c62828;padding:6px 10px}figure{display:inline-block;margin:4px}
figcaption{font-size:12px;color:#555}img{max-width:100%}"""


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if not math.isfinite(v) else f"{v:.4g}"
        return html.escape(str(v))

    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{fmt(v)}</td></tr>" for k, v in rows) + "</table>"


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def alert_section(alert_metrics: Any) -> str:
    """HTML of the alert-level evaluation: summary table and one timeline per bag (sequence)."""
    parts = ["<h2>Alert-level evaluation</h2>",
             "<p>Frames with &ge; 50 labelled anomaly pixels are anomalous, frames with none anomaly-free; an "
             "object is in view when it covers &ge; 50 px; a false alert episode is a run of ALERT frames that "
             "never overlapped a labelled anomaly (anomaly-free frames in ALERT also count the frames an ALERT is "
             "held after an anomaly left the view: clear_frames clean frames and at least cooldown_s); components: "
             "SegmentMeIfYouCan sIoU/PPV F1 of the published "
             "mask (definitions: docs/architecture.md, &ldquo;Alert-level evaluation&rdquo;).</p>",
             _table(alert_metrics.summary_rows())]
    ev = alert_metrics.alerts
    if ev is not None:
        for seq in ev.sequences():
            png = render_timeline_png(ev.timeline(seq), threshold=alert_metrics.threshold,
                                      title=f"{seq}: frame score and alert level")
            parts.append(f"<figure>{_img(base64.b64encode(png).decode(), f'alert timeline {seq}')}"
                         f"<figcaption>{html.escape(seq)}: frame score over time on the alert level "
                         "(purple band: anomaly in view)</figcaption></figure>")
    return "\n".join(parts)


def render_html(
    title: str,
    bags: Sequence[Any],
    metrics: Any,
    summary: dict[str, Any],
    info: dict[str, Any],
    extra_sections: Sequence[tuple[str, str]] = (),
    alert_metrics: Any = None,
) -> str:
    """The report page for one or more :class:`~ood_perception.replay.engine.BagReplay`.

    Args:
        summary: the pooled :meth:`MetricsAccumulator.summary`.
        info: run facts shown at the top (model, backend, params, ...).
        extra_sections: ``(heading, html)`` pairs appended (the demo adds recognition results).
        alert_metrics: the pooled :class:`~ood_perception.replay.alert_metrics.AlertMetrics`: adds the
            alert-level summary table and one alert timeline per bag.
    """
    frames = [f for b in bags for f in b.frames]
    duration = sum(b.duration_s for b in bags)
    wall = sum(b.wall_s for b in bags)
    lat = latency_summary(frames)
    threshold = metrics.threshold
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts.append(_table([(k, v) for k, v in info.items()]))
    rt = duration / wall if wall > 0 else float("nan")
    parts.append("<h2>Run</h2>" + _table([
        ("bags", len(bags)), ("frames processed", len(frames)), ("bag time replayed [s]", duration),
        ("wall time [s]", wall), ("throughput", f"{rt:.2f}x real time" if math.isfinite(rt) else "n/a"),
        ("latency p50 / p95 / max [ms]", " / ".join("n/a" if v is None else f"{v:.1f}" for v in lat.values())),
        *[(f"frames {k}", v) for k, v in level_counts(frames).items()],
    ]))
    for b in bags:
        if b.error:
            parts.append(f"<p class='err'><b>Damaged bag</b> (damaged parts skipped; the rest, up to any cut, is "
                         f"included): {html.escape(b.error)}</p>")
        if getattr(b, "interrupted", None):
            parts.append(f"<p class='err'><b>Interrupted</b> ({html.escape(b.interrupted)}): {html.escape(b.bag)} was "
                         f"stopped after {len(b.frames)} frames; results up to the stop are included.</p>")
    parts.append("<h2>Metrics</h2>")
    if not summary.get("frames_with_labels"):
        parts.append("<p class='note'>No labels: the bag has no label topic and no label folder was given, "
                     "so this report has no metrics (alerts, scores and latency only).</p>")
    else:
        rows: list[tuple[str, Any]] = [("labelled frames", summary["frames_with_labels"])]
        for kind in ("pixel", "point"):
            m = summary.get(kind, {})
            if m.get("available"):
                rows += [(f"{kind} AUROC", m["auroc"]), (f"{kind} FPR95 (OOD 95% caught)", m["fpr95"]),
                         (f"{kind} FPR95_id (ID 95% kept)", m["fpr95_id"]), (f"{kind} AUPR-in", m["aupr_in"]),
                         (f"{kind} AUPR-out", m["aupr_out"]), (f"{kind}s ID / OOD", f"{m['n_id']} / {m['n_ood']}")]
            else:
                rows.append((f"{kind} metrics", m.get("reason", "n/a")))
        for key, level in (("segmentation", "pixel"), ("segmentation_point", "point")):
            seg = summary.get(key, {})
            if seg.get("available"):
                rows.append((f"closed-set mIoU ({level} level)", seg["miou"]))
        parts.append(_table(rows))
        parts.append(_img(fig_roc(metrics, summary), "ROC curves"))
    parts.append(_img(fig_histograms(metrics, threshold), "score histograms"))
    if alert_metrics is not None and alert_metrics.alerts is not None:
        # labelled: the alert section's per-bag timelines show the levels and frame score against
        # the ground truth (the plain timeline below would repeat them without it)
        parts.append("<h2>Alerts</h2><p>Alert level and frame score over time, per bag: "
                     "&ldquo;Alert-level evaluation&rdquo; below.</p>")
    else:
        parts.append("<h2>Alerts</h2>" + _img(fig_timeline(frames, threshold), "alert timeline"))
    if alert_metrics is not None:
        parts.append(alert_section(alert_metrics))
    periods = [np.median(np.diff([f.bag_time_ns for f in b.frames])) * 1e-9 for b in bags if len(b.frames) > 1]
    parts.append("<h2>Latency</h2>" + _img(fig_latency(frames, float(np.median(periods)) if periods else None), "latency"))
    for b in bags:
        th = b.thumbnails or {}
        if th.get("best") or th.get("worst"):
            by = ("mask IoU with the OOD label (1 on a frame without anomaly where nothing is flagged, 0 where "
                  "something is)" if any(f.ood_iou is not None for f in b.frames) else "frame score")
            parts.append(f"<h2>Frames of {html.escape(Path(b.bag).name)}</h2><p>Red: anomaly mask; yellow outline: "
                         f"labelled anomaly. Ranked by {by}.</p>")
            for name in ("best", "worst"):
                for idx, im in th.get(name, []):
                    f = b.frames[idx]
                    cap = f"{name}: frame {idx}, {LEVEL_NAMES[f.level]}, score {f.frame_score:.3g}"
                    if f.ood_iou is not None:
                        cap += f", IoU {f.ood_iou:.2f}"
                    parts.append(f"<figure>{_img(png_b64(im), cap)}<figcaption>{html.escape(cap)}</figcaption></figure>")
    for heading, body in extra_sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    return "\n".join(parts)
