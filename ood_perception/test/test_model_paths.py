"""model.json file entries stay inside the model directory (issue 14 item 6)."""

from __future__ import annotations

import json
import os

import pytest

from ood_perception.models.errors import ModelCorruptError
from ood_perception.models.spec import (
    SEGMENTATION_INPUTS,
    SEGMENTATION_OUTPUTS,
    load_spec,
    read_verified,
    sha256_bytes,
    unsafe_file_path,
)


def write_model(model_dir, path, data=b"graph bytes"):
    model_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "format_version": 1, "kind": "segmentation",
        "files": {"onnx": {"path": path, "sha256": sha256_bytes(data)}},
        "inputs": [{"name": n, "dtype": "float32", "shape": ["batch", 3, 4, 4]} for n in SEGMENTATION_INPUTS],
        "outputs": [{"name": n, "dtype": "float32", "shape": ["batch", 4, 4]} for n in SEGMENTATION_OUTPUTS],
        "class_names": ["road"], "score": {"name": "maxlogit"},
    }
    (model_dir / "model.json").write_text(json.dumps(spec))
    return model_dir


@pytest.mark.parametrize("path, why", [
    ("../secret.onnx", "leaves the model directory"),
    ("sub/../../secret.onnx", "leaves the model directory"),
    ("..\\secret.onnx", "leaves the model directory"),
    ("/etc/passwd", "is absolute"),
    ("C:\\models\\m.onnx", "is absolute"),
    ("", "is empty"),
])
def test_paths_leaving_the_model_dir_are_refused_at_load(tmp_path, path, why):
    """The case: a crafted model.json names a file outside; the behaviour: refused before any file is
    read or hashed; the message: names model.json, the entry and why."""
    (tmp_path / "secret.onnx").write_bytes(b"graph bytes")  # a real, readable file with the right hash
    model = write_model(tmp_path / "m", path)
    with pytest.raises(ModelCorruptError) as err:
        load_spec(model)
    text = str(err.value)
    assert text.startswith(str(model / "model.json")) and f"files.onnx.path {path!r}" in text and why in text


def test_symlink_out_of_the_model_dir_is_refused(tmp_path):
    """A relative name that is a symbolic link to a file elsewhere: refused when read."""
    (tmp_path / "secret.onnx").write_bytes(b"graph bytes")
    model = write_model(tmp_path / "m", "model.onnx")
    os.symlink(tmp_path / "secret.onnx", model / "model.onnx")
    spec = load_spec(model)
    with pytest.raises(ModelCorruptError, match=r"resolves to .*secret.onnx, outside the model directory"):
        read_verified(model, spec, "onnx")


def test_files_inside_the_model_dir_still_load(tmp_path):
    model = write_model(tmp_path / "m", "sub/model.onnx")
    (model / "sub").mkdir()
    (model / "sub/model.onnx").write_bytes(b"graph bytes")
    assert read_verified(model, load_spec(model), "onnx") == b"graph bytes"
    # a link that stays inside is fine too
    os.symlink("sub/model.onnx", model / "alias.onnx")
    write_model(model, "alias.onnx")
    assert read_verified(model, load_spec(model), "onnx") == b"graph bytes"


def test_unsafe_file_path_accepts_plain_names():
    assert unsafe_file_path("model.onnx") is None and unsafe_file_path("a/b.pt") is None
    assert unsafe_file_path("a..b.onnx") is None  # dots inside a name are not a parent reference
