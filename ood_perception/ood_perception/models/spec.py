"""``model.json``: the description of an exported model directory, and its file checks.

An exported model directory holds ``model.json`` plus the files it lists under ``files``
(``onnx``: the graph with the scorer inside; ``torch``: the weights for the torch backend). Each
file carries its sha256, checked by :func:`read_verified` before anything is loaded.

Format (``format_version`` 1)::

    {
      "format_version": 1,
      "kind": "segmentation",                # or "recognition"
      "files": {"onnx": {"path": "model.onnx", "sha256": "..."},
                "torch": {"path": "model.pt", "sha256": "..."}},
      "inputs":  [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 128, 256]}, ...],
      "outputs": [{"name": "class_map", "dtype": "int64", "shape": ["batch", 128, 256]}, ...],
      "class_names": [...], "colors": [[r, g, b], ...],
      "input_size": [...],                   # exactly as in the training checkpoint
      "mean": [...], "std": [...],           # image normalisation (x / 255 - mean) / std
      "score": {"name": "maxlogit", "params": {}, "unimodal": "maxlogit"},
      "threshold": 3.2,                      # score above = anomalous (95% of ID pixels below)
      "calibration": {"tpr": 0.95, "n_pixels": ..., "data": ..., "split": ...},
      "decision": {"pixel_threshold": ..., "region_threshold": ..., "track_window": 3,
                   "scene_shift_fraction": ..., "budget": 0.01, "validation": {...}, ...},
                                             # optional: written by `ood-perception calibrate`
      "outlier_types": [],                   # anomaly types labelled in the training data (segmentation;
                                             # evaluations leave them out); absent = unknown (older export)
      "provenance": {"checkpoint": ..., "train": {...}, "metrics": {...}, "exported_at": ..., ...}
    }

A ``recognition`` model has inputs ``video`` ``[B, 3, T, H, W]`` (``frames / 127.5 - 1``, i.e.
mean = std = 0.5) and ``flow`` ``[B, 2, T-1, H, W]`` (Farneback flow in pixels / ``flow_scale``) and
outputs ``class``, ``confidence`` (softmax probability of that class), ``score`` ``[B]`` (joint head,
the scorer inside the graph) and ``video_class`` / ``video_score`` / ``flow_class`` / ``flow_score``
(the video-only and flow-only expert heads). Its ``model.json`` adds ``clip_len`` (T),
``input_size`` ``[H, W]`` (the frame size), ``flow_params`` (Farneback parameters, see
``ood_perception.data.clips.FlowParams``), ``flow_scale`` and ``normalisation`` (text).

Symbolic dimensions in shapes are strings (``"batch"``); fixed ones are ints.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ood_perception.atomic import atomic_write_text
from ood_perception.models.errors import ModelCorruptError, ModelMismatchError, ModelNotFoundError

#: Version of the ``model.json`` layout written by this code; readers refuse newer versions.
FORMAT_VERSION = 1
#: Model kinds the runtime knows.
KINDS = ("segmentation", "recognition")
SPEC_NAME = "model.json"

#: Inputs and outputs of a segmentation model directory (the runtime contract).
SEGMENTATION_INPUTS = ("image", "lidar")
SEGMENTATION_OUTPUTS = (
    "class_map",
    "score_map",
    "camera_class_map",
    "camera_score_map",
    "lidar_class_map",
    "lidar_score_map",
)
#: Optional seventh output of a segmentation model: the appearance embedding map
#: (float32 ``[B, C, H/8, W/8]``) from which the object decisions pool one embedding per LiDAR
#: object (``pipeline.object_bank``); models exported with ``embedding`` have it.
EMBEDDING_OUTPUT = "embedding"
#: Inputs and outputs of a recognition (video + optical flow clip) model directory.
RECOGNITION_INPUTS = ("video", "flow")
RECOGNITION_OUTPUTS = ("class", "confidence", "score", "video_class", "video_score", "flow_class", "flow_score")


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype (numpy name) and shape (ints, or strings for symbolic dims) of a graph tensor."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileRef:
    """A file of the model directory (path relative to it) and its expected sha256 (hex)."""

    path: str
    sha256: str


@dataclass
class ModelSpec:
    """Parsed ``model.json``. See the module docstring for the meaning of each field."""

    kind: str
    files: dict[str, FileRef]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    class_names: list[str]
    colors: list[list[int]]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    score: dict[str, Any]
    threshold: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    decision: dict[str, Any] = field(default_factory=dict)
    outlier_types: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def score_name(self) -> str:
        return str(self.score.get("name", ""))

    def input(self, name: str) -> TensorSpec:
        """The declared input ``name`` (KeyError if the model has no such input)."""
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """(height, width) of the ``image`` input when fixed, else None."""
        try:
            shape = self.input("image").shape
        except KeyError:
            return None
        h, w = shape[-2], shape[-1]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = {k: {"path": v.path, "sha256": v.sha256} for k, v in self.files.items()}
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        extra = d.pop("extra")
        if not d["decision"]:  # uncalibrated decisions: no key (model.json files stay as export wrote them)
            d.pop("decision")
        if d["outlier_types"] is None:  # unknown (exported before the key existed): no key
            d.pop("outlier_types")
        order = ["format_version", "kind"]
        out = {k: d[k] for k in order}
        out.update({k: v for k, v in d.items() if k not in order})
        out.update(extra)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike[str] = SPEC_NAME) -> ModelSpec:
        """Validate and parse a ``model.json`` mapping; errors name ``source`` and the bad field."""
        if not isinstance(data, dict):
            raise ModelCorruptError(source, f"expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise ModelCorruptError(source, "missing or non-integer 'format_version'")
        if version > FORMAT_VERSION or version < 1:
            raise ModelMismatchError(
                source, f"format_version {version} is not supported (this runtime reads 1..{FORMAT_VERSION})"
            )
        required = ["kind", "files", "inputs", "outputs", "class_names", "score"]
        missing = [k for k in required if k not in data]
        if missing:
            raise ModelCorruptError(source, f"missing field(s) {', '.join(missing)}")
        if data["kind"] not in KINDS:
            raise ModelMismatchError(source, f"unknown model kind {data['kind']!r} (known: {', '.join(KINDS)})")
        try:
            files = {
                str(role): FileRef(path=str(ref["path"]), sha256=str(ref["sha256"]).lower())
                for role, ref in dict(data["files"]).items()
            }
            inputs = [_tensor(t) for t in data["inputs"]]
            outputs = [_tensor(t) for t in data["outputs"]]
            threshold = data.get("threshold")
            known = {f for f in cls.__dataclass_fields__ if f != "extra"}
            spec = cls(
                kind=str(data["kind"]),
                files=files,
                inputs=inputs,
                outputs=outputs,
                class_names=[str(c) for c in data["class_names"]],
                colors=[[int(x) for x in c] for c in data.get("colors", [])],
                input_size=[int(x) for x in data.get("input_size", [])],
                mean=[float(x) for x in data.get("mean", [])],
                std=[float(x) for x in data.get("std", [])],
                score=dict(data["score"]),
                threshold=None if threshold is None else float(threshold),
                calibration=dict(data.get("calibration") or {}),
                provenance=dict(data.get("provenance") or {}),
                format_version=version,
                decision=dict(data.get("decision") or {}),
                outlier_types=_outlier_types(data.get("outlier_types", None)),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCorruptError(source, f"malformed field: {exc!r}") from exc
        if "onnx" not in spec.files:
            raise ModelCorruptError(source, "'files' has no 'onnx' entry")
        for role, ref in spec.files.items():
            problem = unsafe_file_path(ref.path)
            if problem:
                raise ModelCorruptError(source, f"files.{role}.path {ref.path!r} {problem}")
        if spec.colors and len(spec.colors) != len(spec.class_names):
            raise ModelCorruptError(
                source, f"{len(spec.colors)} colours for {len(spec.class_names)} class names"
            )
        if spec.kind == "segmentation":
            _require_names(source, "inputs", spec.input_names, SEGMENTATION_INPUTS)
            _require_names(source, "outputs", spec.output_names, SEGMENTATION_OUTPUTS)
        else:
            _require_names(source, "inputs", spec.input_names, RECOGNITION_INPUTS, spec.kind)
            _require_names(source, "outputs", spec.output_names, RECOGNITION_OUTPUTS, spec.kind)
        return spec


def _outlier_types(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"outlier_types must be a list of anomaly type names, got {value!r}")
    return list(value)


def _tensor(t: Any) -> TensorSpec:
    shape = tuple(s if isinstance(s, str) else int(s) for s in t["shape"])
    return TensorSpec(name=str(t["name"]), dtype=str(t["dtype"]), shape=shape)


def _require_names(source: Any, what: str, have: list[str], need: tuple[str, ...], kind: str = "segmentation") -> None:
    lacking = [n for n in need if n not in have]
    if lacking:
        raise ModelMismatchError(source, f"{kind} model lacks {what} {', '.join(lacking)}")


def unsafe_file_path(path: str) -> str | None:
    """Why a ``files.*.path`` entry of ``model.json`` may not be used (None when it may).

    Entries are names *inside* the model directory: relative, without ``..`` components, drive
    letters or NUL bytes (forward or back slashes both count as separators). This keeps a crafted or
    copied-and-edited ``model.json`` from making the runtime hash and load an arbitrary readable
    file elsewhere (``/etc/...``, ``../other_model/model.onnx``).
    """
    if not path or "\0" in path:
        return "is empty or contains a NUL byte"
    posix, win = PurePosixPath(path), PureWindowsPath(path)
    if posix.is_absolute() or win.is_absolute() or win.drive or path.startswith(("/", "\\")):
        return "is absolute; file paths must be relative to the model directory"
    if ".." in posix.parts or ".." in win.parts:
        return "leaves the model directory ('..'); file paths must stay inside it"
    return None


def model_file(model_dir: str | os.PathLike[str], spec: ModelSpec, role: str) -> Path:
    """The path of ``spec.files[role]`` inside ``model_dir``, confined to it.

    Raises:
        ModelMismatchError: the spec lists no file for ``role``.
        ModelCorruptError: the entry is absolute, has ``..``, or resolves (through a symbolic link)
            to a file outside the model directory.
    """
    model_dir = Path(model_dir)
    if role not in spec.files:
        raise ModelMismatchError(model_dir / SPEC_NAME, f"lists no {role!r} file (has: {', '.join(spec.files)})")
    ref = spec.files[role]
    problem = unsafe_file_path(ref.path)
    if problem:
        raise ModelCorruptError(model_dir / SPEC_NAME, f"files.{role}.path {ref.path!r} {problem}")
    path = model_dir / ref.path
    root = model_dir.resolve()
    target = path.resolve()
    if target != root and root not in target.parents:
        raise ModelCorruptError(
            path, f"{role} file listed in {SPEC_NAME} resolves to {target}, outside the model directory {root}"
        )
    return path


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path`` (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_spec(model_dir: str | os.PathLike[str]) -> ModelSpec:
    """Read and validate ``model_dir/model.json``.

    Raises:
        ModelNotFoundError: the directory or its ``model.json`` is missing.
        ModelCorruptError: ``model.json`` is not valid JSON or lacks required fields.
        ModelMismatchError: unsupported format version or model kind.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelNotFoundError(model_dir, "model directory does not exist")
    path = model_dir / SPEC_NAME
    if not path.is_file():
        raise ModelNotFoundError(path, f"no {SPEC_NAME} in the model directory (not an exported model?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCorruptError(path, f"not valid JSON ({exc})") from exc
    return ModelSpec.from_dict(data, source=path)


def read_verified(model_dir: str | os.PathLike[str], spec: ModelSpec, role: str) -> bytes:
    """Bytes of the file ``spec.files[role]``, after checking they hash to its recorded sha256.

    The bytes returned are the ones hashed, so nothing can change between check and use.

    Raises:
        ModelMismatchError: the spec lists no file for ``role``.
        ModelNotFoundError: the file is missing.
        ModelCorruptError: its sha256 differs from ``model.json``, or its path leaves the model
            directory (see :func:`model_file`).
    """
    path = model_file(model_dir, spec, role)
    ref = spec.files[role]
    if not path.is_file():
        raise ModelNotFoundError(path, f"{role} file listed in {SPEC_NAME} does not exist")
    data = path.read_bytes()
    digest = sha256_bytes(data)
    if digest != ref.sha256:
        raise ModelCorruptError(
            path, f"sha256 {digest[:16]}... does not match {SPEC_NAME} ({ref.sha256[:16]}...): file corrupt or replaced"
        )
    return data


def write_spec(path: str | os.PathLike[str], spec: ModelSpec) -> None:
    """Write ``spec`` as JSON to ``path`` atomically (temp file in the same directory + rename)."""
    path = Path(path)
    text = json.dumps(spec.to_dict(), indent=2, sort_keys=False) + "\n"
    atomic_write_text(path, text)
