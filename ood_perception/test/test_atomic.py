"""Tests of ood_perception.atomic: content, umask-derived modes, cleanup on failure, no partial file,
replacement of an existing file or directory."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from ood_perception.atomic import (
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
    replace_dir,
)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _leftovers(d: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name not in keep)


def test_current_umask_matches_os_umask(umask_027):
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # reading it did not change it


def test_bytes_and_text_content_and_parents(tmp_path):
    p = atomic_write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01abc")
    assert p.read_bytes() == b"\x00\x01abc"
    t = atomic_write_text(tmp_path / "t.txt", "h\u00e9llo\nline2\r\n")
    assert t.read_bytes() == "h\u00e9llo\nline2\r\n".encode()  # utf-8, no newline translation
    assert _leftovers(tmp_path, {"a", "t.txt"}) == []


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_mode_honours_umask_like_open(tmp_path, mask):
    old = os.umask(mask)
    try:
        ref = tmp_path / "ref"
        with open(ref, "wb") as fh:  # what a plain open() gives
            fh.write(b"r")
        a = atomic_write_bytes(tmp_path / "a", b"x")
        with atomic_path(tmp_path / "b.npy", suffix=".npy") as tmp:
            np.save(tmp, np.arange(3))
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_bytes(b"f")
        refdir = tmp_path / "refdir"
        refdir.mkdir()
    finally:
        os.umask(old)
    assert _mode(a) == _mode(ref) == 0o666 & ~mask
    assert _mode(tmp_path / "b.npy") == 0o666 & ~mask
    assert _mode(tmp_path / "d") == _mode(refdir) == 0o777 & ~mask
    assert _mode(tmp_path / "d" / "f") == 0o666 & ~mask


def test_replace_existing_file(tmp_path):
    p = tmp_path / "f.json"
    p.write_text("old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert _leftovers(tmp_path, {"f.json"}) == []


def test_temp_removed_on_exception_and_old_kept(tmp_path):
    p = tmp_path / "f.npz"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_path(p, suffix=".npz") as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".npz") and tmp != p
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert p.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"f.npz"}) == []
    with pytest.raises(TypeError, match="needs bytes"):
        atomic_write_bytes(tmp_path / "g", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a str"):
        atomic_write_text(tmp_path / "g", 123)  # type: ignore[arg-type]
    assert _leftovers(tmp_path, {"f.npz"}) == []


def test_writer_that_removes_its_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not leave a file"):
        with atomic_path(tmp_path / "x") as tmp:
            tmp.unlink()
    assert list(tmp_path.iterdir()) == []


def test_no_partial_file_visible_during_write(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(b"A" * 1000)
    new = b"B" * 4_000_000
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = p.read_bytes()
            seen.add(data[:1] + str(len(data)).encode())

    th = threading.Thread(target=reader)
    th.start()
    try:
        with atomic_path(p) as tmp:
            with open(tmp, "wb") as fh:
                for i in range(0, len(new), 100_000):
                    fh.write(new[i:i + 100_000])
                    fh.flush()
                    assert p.read_bytes() == b"A" * 1000  # the target is untouched while writing
    finally:
        stop.set()
        th.join()
    assert p.read_bytes() == new
    assert seen <= {b"A1000", b"B4000000"}


def test_atomic_dir_replaces_and_cleans_up(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_dir(out) as d:
            (d / "half").write_text("x")
            raise ValueError("boom")
    assert sorted(q.name for q in out.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path, {"model"}) == []
    with atomic_dir(out) as d:
        (d / "new.txt").write_text("new")
    assert sorted(q.name for q in out.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path, {"model"}) == []


def test_replace_dir_over_a_file_and_missing_target(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    dst = tmp_path / "dst"
    dst.write_text("a file")
    replace_dir(src, dst)
    assert (dst / "a").read_text() == "a" and not src.exists()
    src2 = tmp_path / "src2"
    src2.mkdir()
    replace_dir(src2, tmp_path / "fresh")
    assert (tmp_path / "fresh").is_dir()
    assert _leftovers(tmp_path, {"dst", "fresh"}) == []


def test_write_spec_gives_model_json_the_umask_mode(tmp_path, umask_027):
    """Regression: runtime.spec.write_spec used mkstemp directly and left model.json at 0600."""
    from ood_perception.models.spec import load_spec, write_spec
    from ood_perception.runtime import default_model_dir

    spec = load_spec(default_model_dir())
    write_spec(tmp_path / "model.json", spec)
    assert _mode(tmp_path / "model.json") == 0o640
    assert load_spec(tmp_path).to_dict() == spec.to_dict()
    assert _leftovers(tmp_path, {"model.json"}) == []
