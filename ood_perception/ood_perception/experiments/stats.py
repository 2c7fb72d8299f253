"""Paired comparisons over seeds for the method tables: mean difference, 95% interval and verdict.

Every table of ``experiments`` compares a method with a reference on the same seeds (same data,
same initialisation), so the per-seed differences are paired; the interval is
``mean ± t(0.975, n-1) · sd / sqrt(n)`` (Student's t over seeds, SciPy's quantile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

#: Fewest seeds for paired intervals and verdicts (two seeds give a t-interval on one degree of freedom).
MIN_PAIRED_SEEDS = 3


@dataclass(frozen=True)
class Paired:
    """Paired difference ``method - reference`` over seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    def verdict(self, higher_is_better: bool) -> str:
        """``better`` / ``worse`` when the interval excludes 0, else ``no clear diff.``
        (``n/a`` with fewer than two seeds)."""
        if self.n < 2:
            return "n/a"
        if (self.lo > 0) if higher_is_better else (self.hi < 0):
            return "better"
        if (self.hi < 0) if higher_is_better else (self.lo > 0):
            return "worse"
        return "no clear diff."

    def claim_verdict(self, higher_is_better: bool = True) -> str:
        """A claim that the method beats the reference: ``reproduced`` when the interval is on the
        better side of 0, ``not reproduced`` when on the worse side, else ``unresolved``."""
        return {"better": "reproduced", "worse": "not reproduced"}.get(self.verdict(higher_is_better), "unresolved")

    def interval(self, scale: float = 1.0, digits: int = 1) -> str:
        """``+1.2 [-0.3, +2.7]`` (values times ``scale``)."""
        f = f"{{:+.{digits}f}}"
        return f"{f.format(self.mean * scale)} [{f.format(self.lo * scale)}, {f.format(self.hi * scale)}]"

    def cell(self, higher_is_better: bool, scale: float = 1.0, digits: int = 1) -> str:
        """``+1.2 [-0.3, +2.7] no clear diff.`` (values times ``scale``)."""
        return f"{self.interval(scale, digits)} {self.verdict(higher_is_better)}"


def paired(method: Sequence[float], reference: Sequence[float]) -> Paired:
    """The paired difference of two equally long per-seed sequences (same seed order)."""
    d = np.asarray(method, np.float64) - np.asarray(reference, np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"need two equally long non-empty 1-D sequences, got shapes {np.shape(method)}, {np.shape(reference)}")
    if d.size < 2:
        return Paired(float(d.mean()), float("nan"), float("nan"), 1)
    half = float(student_t.ppf(0.975, d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return Paired(float(d.mean()), float(d.mean() - half), float(d.mean() + half), int(d.size))
