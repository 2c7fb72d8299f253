"""docs/reliability.md stays true to the suite: every fault case names tests that exist.

The whole matrix is re-run (and its counts written) by ``scripts/reliability_matrix.py``; here
only its parsing and references are checked, so a renamed or deleted test cannot leave a case of
the document pinned by nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _matrix():
    spec = importlib.util.spec_from_file_location("reliability_matrix", ROOT / "scripts" / "reliability_matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_fault_case_is_pinned_by_an_existing_test():
    m = _matrix()
    cases = m.parse()
    assert len(cases) >= 40
    assert m.missing_tests(cases) == []
    c = m.counts(cases, None)
    assert c["survived"] + c["written_data_checks"] == c["cases"]


def test_counts_follow_the_outcomes_of_each_case(tmp_path):
    m = _matrix()
    doc = tmp_path / "r.md"
    doc.write_text("## A\n\n| fault | survived | clear error | data lost | test |\n|---|---|---|---|---|\n"
                   "| x | yes | `DEGRADED` | the frame | `fh::test_a`, `tr::test_b[p]` |\n"
                   "| y | - | none needed | none | same |\n")
    cases = m.parse(doc)
    assert [c.tests for c in cases] == [[("test_pipeline_frame_handler.py", "test_a"), ("test_transport.py", "test_b")]] * 2
    outcomes = {("test_pipeline_frame_handler.py", "test_a"): "passed", ("test_transport.py", "test_b"): "skipped"}
    c = m.counts(cases, outcomes)
    assert (c["cases"], c["survived"], c["clear_error"], c["none_needed"], c["data_lost"]) == (2, 1, 1, 1, 1)
    assert (c["cases_passed"], c["cases_skipped"], c["cases_failed"]) == (0, 2, 0)
    outcomes[("test_transport.py", "test_b")] = "failed"
    assert m.counts(cases, outcomes)["cases_failed"] == 2
