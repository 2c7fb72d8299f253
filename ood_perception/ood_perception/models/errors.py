"""Errors of the inference runtime.

Every problem with a model directory raises a :class:`ModelError` subclass whose message names the
offending file and says what is wrong, so a node or CLI can print one clear line. The subclasses
also derive from the matching built-in (``FileNotFoundError`` / ``ValueError``) so generic handlers
(e.g. the CLI's user-error handler) catch them.
"""

from __future__ import annotations

import os


class ModelError(Exception):
    """Base class: a model directory or one of its files cannot be used.

    Attributes:
        path: the file (or directory) the problem is about.
        reason: what is wrong with it, in words.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno/filename
        return f"{self.path}: {self.reason}"


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model directory, its ``model.json`` or a file it references does not exist."""


class ModelCorruptError(ModelError, ValueError):
    """A file exists but cannot be read: invalid JSON/ONNX/checkpoint, or its sha256 differs."""


class ModelMismatchError(ModelError, ValueError):
    """Files are readable but disagree: unsupported format version, wrong model kind, or a graph whose
    inputs/outputs/classes differ from what ``model.json`` declares."""


class InferenceInputError(ValueError):
    """The inputs given to ``Backend.infer`` do not match the model's declared inputs."""


class BackendUnavailableError(RuntimeError):
    """The requested backend or device cannot run here (e.g. TensorRT not installed, no CUDA)."""


class ParityError(RuntimeError):
    """A reduced-precision engine differs from the FP32 reference beyond the allowed tolerance."""
