"""Run every benchmark in bench/ (``make bench``); each writes its figures to bench/results/.

Benchmarks are scripts ``bench/<name>.py`` (helpers start with ``_``). They run one after the
other in fresh interpreters so one's threads and caches do not skew the next. Extra arguments
are passed to every script (e.g. ``--quick`` where a script supports it).

usage: python bench/run_all.py [--only NAME ...] [-- ARGS...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return non-zero when any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (default: all)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments after -- go to every script")
    args = parser.parse_args(argv)
    extra = [a for a in args.rest if a != "--"]
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")
    if args.only:
        scripts = [p for p in scripts if p.stem in set(args.only)]
    failed = []
    for script in scripts:
        t0 = time.perf_counter()
        print(f"== bench/{script.name}", flush=True)
        rc = subprocess.call([sys.executable, str(script), *extra], cwd=HERE.parent)
        print(f"== bench/{script.name}: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
