#!/usr/bin/env python3
"""Re-run the fault matrix of docs/reliability.md as one script and count it.

Every row of the document's tables is a fault case with the test(s) that pin it (last column,
e.g. ``fh::test_unusable_cloud_makes_the_frame_camera_only_and_degraded``; the abbreviations are
the ones the document defines). This script reads the tables, runs every referenced test in one
pytest session, and prints per case whether its tests passed, then the counts the issue asks for:
cases tried, survived (the process kept running or refused cleanly), clear error (a named level,
message or diagnostics line where the user needs one), data lost, and tests passed/failed/skipped.
With ``--write`` the counts paragraph of the document (between the ``<!-- matrix-counts -->``
markers) is replaced by this run's.

Usage (from the repository root, in the venv): ``python scripts/reliability_matrix.py [--write]``.
Exit code 1 when a case's test failed or a referenced test does not exist.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ood_perception.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
TESTS = ROOT / "ood_perception" / "test"
MARK_BEGIN, MARK_END = "<!-- matrix-counts -->", "<!-- /matrix-counts -->"

#: The document's abbreviations of test files (it defines them above its tables).
ABBREVIATIONS = {
    "fh": "test_pipeline_frame_handler.py", "nbi": "test_nodes_bad_input.py", "params": "test_pipeline_params.py",
    "dmg": "test_bag_damage.py", "rf": "test_replay_files.py", "sig": "test_signals.py", "mp": "test_model_paths.py",
    "tdds": "test_transport_dds.py", "tr": "test_transport.py",
}
_REF = re.compile(r"`([\w.]+)::(test_\w+)(?:\[[^\]`]*\])?`")


@dataclass
class Case:
    """One row: the fault, its columns, and the test functions that pin it (file, function)."""

    section: str
    fault: str
    survived: str
    clear_error: str
    data_lost: str
    tests: list[tuple[str, str]] = field(default_factory=list)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(doc: Path = DOC) -> list[Case]:
    """The fault cases of ``doc``'s tables; a row saying "same tests"/"same" reuses the previous row's."""
    cases: list[Case] = []
    section = ""
    for line in doc.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| fault"):
            continue
        cells = _cells(line)
        if len(cells) != 5:
            raise ValueError(f"{doc.name}: a table row has {len(cells)} cells, expected 5: {line[:80]}")
        fault, survived, clear, lost, test_cell = cells
        tests = []
        for ref, func in _REF.findall(test_cell):
            name = ABBREVIATIONS.get(ref, ref)
            tests.append((name if name.endswith(".py") else f"{name}.py", func))
        if not tests and test_cell.lower().startswith("same") and cases:
            tests = list(cases[-1].tests)
        cases.append(Case(section, fault, survived, clear, lost, tests))
    return cases


def missing_tests(cases: list[Case], tests_dir: Path = TESTS) -> list[str]:
    """References that name no test function (a renamed test leaves the document pointing nowhere)."""
    defined: dict[str, set[str]] = {}
    out = []
    for case in cases:
        if not case.tests:
            out.append(f"{case.section}: '{case.fault[:60]}' names no test")
        for file, func in case.tests:
            if file not in defined:
                path = tests_dir / file
                defined[file] = ({n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
                                 if path.is_file() else set())
            if func not in defined[file]:
                out.append(f"{file}::{func} (row '{case.fault[:60]}') does not exist")
    return out


def _no(text: str) -> bool:
    t = text.strip().lower()
    return t in ("-", "") or t.startswith("none")


class _Outcomes:
    """pytest plugin: the worst outcome per test function (a parametrised function fails if any case does)."""

    RANK = {"passed": 0, "skipped": 1, "failed": 2}

    def __init__(self) -> None:
        self.by_function: dict[tuple[str, str], str] = {}

    def pytest_runtest_logreport(self, report) -> None:  # noqa: ANN001 - pytest's hook signature
        if report.when != "call" and report.outcome == "passed":
            return
        path, _, rest = report.nodeid.partition("::")
        key = (Path(path).name, rest.split("[", 1)[0])
        prev = self.by_function.get(key, "passed")
        self.by_function[key] = max(prev, report.outcome, key=self.RANK.__getitem__)


def run(cases: list[Case], extra_args: list[str]) -> dict[tuple[str, str], str]:
    """Run every referenced test function once (all its parameters) in one pytest session."""
    import pytest  # lazy: only the run needs it, --check does not (the test suite imports this module)

    functions = sorted({t for c in cases for t in c.tests})
    ids = [f"{TESTS / f}::{fn}" for f, fn in functions]
    plugin = _Outcomes()
    pytest.main(["-q", "-p", "no:cacheprovider", *extra_args, *ids], plugins=[plugin])
    return plugin.by_function


def counts(cases: list[Case], outcomes: dict[tuple[str, str], str] | None) -> dict[str, int]:
    """The figures of the counts paragraph."""
    c = {
        "cases": len(cases),
        "survived": sum(not _no(k.survived) for k in cases),
        "clear_error": sum(not _no(k.clear_error) for k in cases),
        "none_needed": sum(k.clear_error.lower().startswith("none") for k in cases),
        "data_lost": sum(not _no(k.data_lost) for k in cases),
        "written_data_checks": sum(_no(k.survived) for k in cases),
        "tests": len({t for k in cases for t in k.tests}),
    }
    if outcomes is not None:
        for status in ("passed", "failed", "skipped"):
            c[f"cases_{status}"] = sum(
                max((outcomes.get(t, "failed") for t in k.tests), key=_Outcomes.RANK.__getitem__, default="failed") == status
                for k in cases)
    return c


def paragraph(c: dict[str, int], seconds: float) -> str:
    return (f"**Counts, re-run by `python scripts/reliability_matrix.py --write` ({time.strftime('%Y-%m-%d')}, "
            f"{seconds:.0f} s on {_cpus()} CPUs):** {c['cases']} fault cases tried, pinned by {c['tests']} test functions "
            f"run in one pytest session: {c['cases_passed']} cases passed, {c['cases_failed']} failed, "
            f"{c['cases_skipped']} skipped here (a skip says why in the test). Survived (kept running or refused "
            f"cleanly): {c['survived']} of {c['cases']}; the other {c['written_data_checks']} "
            f"{'is a check' if c['written_data_checks'] == 1 else 'are checks'} of written data "
            f"(e.g. chunk CRCs), not a process under fault. Clear error: {c['clear_error']} cases show a named level, "
            f"one-line message or `/diagnostics` line ({c['none_needed']} of them need none: the fault is handled, "
            f"e.g. a coerced parameter). Data lost in {c['data_lost']} cases, each limited to what its row says (the "
            f"damaged chunk, the stale modality, the frames the worker skips).")


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the counts paragraph of docs/reliability.md")
    ap.add_argument("--check", action="store_true", help="only parse and check the references, run nothing")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)
    cases = parse()
    missing = missing_tests(cases)
    for m in missing:
        print(f"reliability_matrix: error: {m}", file=sys.stderr)
    if args.check:
        print(counts(cases, None))
        return 1 if missing else 0
    t0 = time.perf_counter()
    outcomes = run(cases, args.pytest_args)
    c = counts(cases, outcomes)
    for k in cases:
        worst = max((outcomes.get(t, "failed") for t in k.tests), key=_Outcomes.RANK.__getitem__, default="failed")
        if worst != "passed":
            print(f"{worst.upper():8s} {k.section}: {k.fault[:90]}")
    text = paragraph(c, time.perf_counter() - t0)
    print(text)
    if args.write:
        doc = DOC.read_text()
        a, b = doc.index(MARK_BEGIN) + len(MARK_BEGIN), doc.index(MARK_END)
        atomic_write_text(DOC, doc[:a] + "\n" + text + "\n" + doc[b:])
    return 1 if missing or c["cases_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
