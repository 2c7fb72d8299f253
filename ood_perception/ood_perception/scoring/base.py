"""The :class:`Scorer` base class, the scorer registry and shared tensor helpers.

Every scorer is a :class:`torch.nn.Module` whose ``forward(logits, features=None)`` returns one OOD
score per sample or per pixel, **higher = more anomalous**. Statistics learned from
in-distribution data by :meth:`Scorer.fit` are stored as buffers, so they travel with
``state_dict`` and are baked into an ONNX graph as initialisers. ``forward`` holds no Python
control flow on tensor *values* (only on ranks and static sizes), so ``torch.onnx.export`` traces
it faithfully.

Shapes: per sample ``logits [N, C]`` / ``features [N, D]`` -> ``[N]``; per pixel
``logits [B, C, H, W]`` / ``features [B, D, H, W]`` -> ``[B, H, W]``. Per-pixel input is handled
by moving the channel axis last and flattening to ``[B*H*W, C]`` (see :func:`flatten_channels`),
scoring, and reshaping back, so both paths run the same code.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "Scorer",
    "available_scorers",
    "flatten_channels",
    "get_scorer",
    "percentile",
    "register",
]

_REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator adding a :class:`Scorer` subclass to the registry under ``cls.name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} has no `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"scorer name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_scorers() -> list[str]:
    """Names accepted by :func:`get_scorer`, sorted."""
    return sorted(_REGISTRY)


def get_scorer(name: str, **params: Any) -> Scorer:
    """Build the scorer registered as ``name`` (case-insensitive) with its parameters.

    Raises:
        ValueError: unknown name, unknown parameter, or an invalid parameter value.
    """
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; available: {', '.join(available_scorers())}")
    cls = _REGISTRY[key]
    try:
        return cls(**params)
    except TypeError as exc:  # unexpected keyword -> a clear user error
        raise ValueError(f"scorer {key!r}: {exc}") from exc


def flatten_channels(x: Tensor, name: str) -> Tensor:
    """``[N, C]`` -> unchanged; ``[B, C, H, W]`` -> ``[B*H*W, C]`` (channel axis moved last)."""
    if x.dim() == 2:
        return x
    if x.dim() == 4:
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    raise ValueError(f"{name} must be [N, C] or [B, C, H, W], got shape {tuple(x.shape)}")


def percentile(x: Tensor, q: float, dim: int | None = None) -> Tensor:
    """numpy-style percentile (linear interpolation) of ``x`` in float64; ``dim=None`` flattens.

    Written with ``torch.sort`` because :func:`torch.quantile` refuses inputs over 16M elements.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if dim is None:
        x, dim = x.reshape(-1), 0
    xs = torch.sort(x.to(torch.float64), dim=dim).values
    n = xs.shape[dim]
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    pos = q / 100.0 * (n - 1)
    lo, hi = int(pos // 1), min(int(pos // 1) + 1, n - 1)
    frac = pos - lo
    return xs.select(dim, lo) * (1.0 - frac) + xs.select(dim, hi) * frac


def _as_tensor(x: Any, name: str, dtype: torch.dtype = torch.float64) -> Tensor:
    if x is None:
        raise ValueError(f"{name} is required")
    t = torch.as_tensor(x).detach().to("cpu")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t.to(dtype)


class Scorer(nn.Module):
    """Base class of all OOD scorers (higher score = more anomalous).

    Class attributes tell callers what a scorer needs:

    * ``requires_fit``: :meth:`fit` must be called (or a fitted ``state_dict`` loaded) first;
    * ``needs_logits`` / ``needs_features``: which ``forward`` inputs are used;
    * ``needs_classifier``: :meth:`fit` takes the final linear layer (``classifier_weight``
      ``[C, D]``, ``classifier_bias`` ``[C]``, as in :class:`torch.nn.Linear` or a 1x1 conv with
      the trailing singleton axes squeezed);
    * ``needs_labels``: :meth:`fit` takes ID labels (``0..C-1``; other values are ignored).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    requires_fit: ClassVar[bool] = False
    needs_logits: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    needs_classifier: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    #: buffers filled by :meth:`fit`; the scorer is fitted when all are non-empty
    fit_buffers: ClassVar[tuple[str, ...]] = ()
    #: a fitted buffer whose last axis is the feature width D (checked against ``features``)
    feature_dim_buffer: ClassVar[str | None] = None

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.params: dict[str, Any] = dict(params)
        for b in self.fit_buffers:
            self.register_buffer(b, torch.empty(0))

    # ------------------------------------------------------------------ public API
    def config(self) -> dict[str, Any]:
        """``{"name", "params"}``: enough to rebuild with :func:`get_scorer` (then load the
        ``state_dict`` for fitted statistics)."""
        return {"name": self.name, "params": dict(self.params)}

    @property
    def fitted(self) -> bool:
        """True when every statistic the scorer needs is present."""
        return all(getattr(self, b).numel() > 0 for b in self.fit_buffers)

    @torch.no_grad()
    def fit(
        self,
        logits: Tensor | None = None,
        features: Tensor | None = None,
        labels: Tensor | None = None,
        classifier_weight: Tensor | None = None,
        classifier_bias: Tensor | None = None,
        **extra: Any,
    ) -> Scorer:
        """Learn the statistics from in-distribution data; returns ``self``.

        Inputs may be per sample (``[N, C]``, ``[N, D]``, labels ``[N]``) or per pixel
        (``[B, C, H, W]``, ``[B, D, H, W]``, labels ``[B, H, W]``), torch tensors or numpy arrays.
        Scorers without statistics accept and ignore everything.
        """
        if extra:
            raise ValueError(f"scorer {self.name!r}: unexpected fit arguments {sorted(extra)}")
        return self

    def forward(self, logits: Tensor | None, features: Tensor | None = None) -> Tensor:
        """Score ``[N, C]``/``[N, D]`` -> ``[N]`` or ``[B, C, H, W]``/``[B, D, H, W]`` -> ``[B, H, W]``."""
        if self.requires_fit and not self.fitted:
            raise RuntimeError(f"scorer {self.name!r} needs fit() (or a fitted state_dict) before scoring")
        if self.needs_logits and logits is None:
            raise ValueError(f"scorer {self.name!r} needs logits")
        if self.needs_features and features is None:
            raise ValueError(f"scorer {self.name!r} needs features")
        used = [t for t, need in ((logits, self.needs_logits), (features, self.needs_features)) if need]
        ref = used[0]
        if ref.dim() not in (2, 4):
            raise ValueError(f"inputs must be [N, C] or [B, C, H, W], got shape {tuple(ref.shape)}")
        for t in used[1:]:
            if t.dim() != ref.dim() or t.shape[0] != ref.shape[0] or t.shape[2:] != ref.shape[2:]:
                raise ValueError(
                    f"logits {tuple(logits.shape)} and features {tuple(features.shape)} "  # type: ignore[union-attr]
                    "must share batch and spatial sizes"
                )
        if self.needs_features and self.feature_dim_buffer is not None:
            d = getattr(self, self.feature_dim_buffer).shape[-1]
            if features.shape[1] != d:  # type: ignore[union-attr]
                raise ValueError(
                    f"scorer {self.name!r} was fitted on {d}-dim features, got {features.shape[1]}"  # type: ignore[union-attr]
                )
        flat_logits = flatten_channels(logits, "logits") if self.needs_logits else None  # type: ignore[arg-type]
        flat_features = flatten_channels(features, "features") if self.needs_features else None  # type: ignore[arg-type]
        score = self.score_flat(flat_logits, flat_features)
        if ref.dim() == 4:
            return score.reshape(ref.shape[0], ref.shape[2], ref.shape[3])
        return score

    def score_flat(self, logits: Tensor | None, features: Tensor | None) -> Tensor:
        """Score flattened inputs ``[N, C]`` / ``[N, D]`` -> ``[N]`` (implemented by subclasses)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _set(self, name: str, value: Tensor) -> None:
        """Store a fitted statistic as a float32 buffer on the scorer's device (replacing the
        placeholder)."""
        device = getattr(self, name).device
        setattr(self, name, value.detach().to(device=device, dtype=torch.float32).contiguous())

    def _check_classifier(self, weight: Any, bias: Any, d: int | None = None) -> tuple[Tensor, Tensor]:
        w = _as_tensor(weight, "classifier_weight")
        if w.dim() == 4 and w.shape[2:] == (1, 1):  # 1x1 conv weight
            w = w[:, :, 0, 0]
        if w.dim() != 2:
            raise ValueError(f"classifier_weight must be [C, D] (or [C, D, 1, 1]), got {tuple(w.shape)}")
        b = (
            torch.zeros(w.shape[0], dtype=torch.float64)
            if bias is None
            else _as_tensor(bias, "classifier_bias")
        )
        if b.shape != (w.shape[0],):
            raise ValueError(f"classifier_bias must be [{w.shape[0]}], got {tuple(b.shape)}")
        if d is not None and w.shape[1] != d:
            raise ValueError(f"classifier_weight has {w.shape[1]} input features, features have {d}")
        return w, b

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # fitted buffers change shape at fit time: adopt the incoming shape before copying
        for b in self.fit_buffers:
            key = prefix + b
            if key in state_dict and state_dict[key].shape != getattr(self, b).shape:
                device = getattr(self, b).device
                setattr(self, b, torch.empty(state_dict[key].shape, dtype=torch.float32, device=device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def flat_fit_inputs(
    features: Any = None, labels: Any = None, logits: Any = None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Flatten fit inputs to ``[N, D]`` / ``[N]`` / ``[N, C]`` float64 (labels int64)."""
    f = flatten_channels(_as_tensor(features, "features"), "features") if features is not None else None
    lg = flatten_channels(_as_tensor(logits, "logits"), "logits") if logits is not None else None
    y = None
    if labels is not None:
        y = torch.as_tensor(labels).detach().to("cpu").reshape(-1).to(torch.int64)
        n = f.shape[0] if f is not None else (lg.shape[0] if lg is not None else y.shape[0])
        if y.shape[0] != n:
            raise ValueError(f"labels have {y.shape[0]} entries for {n} samples/pixels")
    return f, y, lg
