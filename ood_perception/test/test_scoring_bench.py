"""Tests of bench/_common.py, the helpers shared by the benchmark scripts: atomic result writing,
Markdown tables, timers, machine description."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if not (BENCH / "_common.py").is_file():
    pytest.skip("bench/ not present next to the package", allow_module_level=True)
sys.path.insert(0, str(BENCH))
import _common  # noqa: E402


def test_write_results_is_atomic_and_complete(tmp_path: Path) -> None:
    j, m = _common.write_results("demo", {"results": {"a": 1.5}}, "# demo", results_dir=tmp_path)
    data = json.loads(j.read_text())
    assert data["benchmark"] == "demo" and data["results"] == {"a": 1.5}
    assert data["machine"]["cpu_count"] >= 1 and "python" in data["machine"]
    assert m.read_text() == "# demo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.md"]  # no temp files left


def test_atomic_write_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    _common.atomic_write_text(target, "old")

    with pytest.raises(TypeError):
        _common.atomic_write_text(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_markdown_table_and_timers() -> None:
    table = _common.markdown_table(["a", "b"], [["x", 1.23456789], ["y", 2]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x | 1.235 |", "| y | 2 |"]
    calls: list[str] = []
    res = _common.time_interleaved({"f": lambda: calls.append("f"), "g": lambda: calls.append("g")}, repeat=3)
    assert calls == ["f", "g"] * 4  # 1 warm-up + 3 timed, alternating
    assert set(res) == {"f", "g"} and res["f"]["repeat"] == 3 and res["f"]["min"] <= res["f"]["median"]
    t = _common.time_call(lambda: None, repeat=2, warmup=0)
    assert t["repeat"] == 2 and t["max"] >= t["min"] >= 0
    assert "logical CPUs" in _common.machine_line()
    with pytest.raises(ValueError):
        _common.time_call(lambda: None, repeat=0)
