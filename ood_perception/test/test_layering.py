"""The floors of the house (../shared/DESIGN.md, docs/architecture.md "Floors"): which room may import which.

Every ``import`` of every module of ``ood_perception`` counts, also those inside functions, under
``if TYPE_CHECKING`` and in ``try`` blocks: a lazy import is still a dependency. A room may import
the rooms its row names and, transitively, what those may import; ``atomic`` (atomic file writes)
may be imported by every room. ROS client libraries and ROS message packages may be imported
only by ``ros``, ``app`` and the command line. The second test shows the checker failing on a
deliberately wrong tree, so a broken floor cannot pass unnoticed.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ood_perception"

#: room -> rooms it may import directly (docs/architecture.md "Floors"; DESIGN.md's table).
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "atomic": (),
    "metrics": (),
    "scoring": (),
    "geometry": (),
    "codec": ("geometry",),
    "models": ("scoring",),
    "losses": (),
    "synthesis": (),
    "distill": (),
    "data": ("codec", "geometry"),
    "evaluation": ("metrics", "geometry"),
    "world": ("data",),
    "runtime": ("models",),
    "trainer": ("models", "losses", "synthesis", "distill", "data", "evaluation", "runtime"),
    "pipeline": ("codec", "geometry", "runtime", "evaluation"),
    "experiments": ("trainer", "world", "evaluation"),
    "ros": ("codec", "pipeline"),
    "replay": ("data", "codec", "pipeline", "evaluation"),
    "app": ("replay", "ros", "world"),
    "assets": (),
}
#: Rooms every room may import.
EVERYWHERE = ("atomic",)
#: The top floor: may import every room.
TOP = ("cli", "commands")
#: Third-party top-level packages that belong to the ROS side only.
ROS_PACKAGES = ("rclpy", "ood_perception_msgs", "std_msgs", "sensor_msgs", "builtin_interfaces",
                "diagnostic_msgs", "visualization_msgs", "geometry_msgs", "tf2_msgs", "rosgraph_msgs",
                "lifecycle_msgs", "launch", "launch_ros")
ROS_ROOMS = ("ros", "app", *TOP)


def allowed(rules: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    """Each room's transitive closure of :data:`MAY_IMPORT`."""

    @functools.cache
    def closure(room: str) -> frozenset[str]:
        out = set(rules[room])
        for r in rules[room]:
            out |= closure(r)
        return frozenset(out)

    return {room: set(closure(room)) | {room, *EVERYWHERE} for room in rules}


def _room_of(module: str, package: str) -> str | None:
    parts = module.split(".")
    if parts[0] != package:
        return None
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path, package: str, module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import statement in the file, nested ones included."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == package or not node.module:  # from ood_perception import runtime -> the room
                out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((mod, node.lineno))
    return out


def violations(root: Path, rules: dict[str, tuple[str, ...]] = MAY_IMPORT) -> list[str]:
    """Every import in the package at ``root`` that breaks the floors, as ``file:line: a -> b``."""
    package = root.name
    ok = allowed(rules)
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if path.name == "__init__.py" else rel.parts)
        room = _room_of(module, package)
        where = path.relative_to(root)
        if room == "":  # the package's own __init__: version only
            room = "__init__"
        if room not in ok and room not in TOP and room != "__init__":
            found.append(f"{where}: room {room!r} is not on any floor (add it to the table)")
            continue
        for target, line in imports_of(path, package, module):
            top = target.split(".")[0]
            if top in ROS_PACKAGES and room not in ROS_ROOMS:
                found.append(f"{where}:{line}: {room} -> {target} (ROS packages only in {', '.join(ROS_ROOMS)})")
            dest = _room_of(target, package)
            if dest is None or dest in ("", room) or room in TOP:
                continue
            if dest in TOP:
                found.append(f"{where}:{line}: {room} -> {dest} (nothing below the command line imports it)")
            elif room == "__init__" or dest not in ok[room]:
                found.append(f"{where}:{line}: {room} -> {dest}")
    return found


def test_the_package_keeps_its_floors() -> None:
    assert violations(PACKAGE) == []


def test_checker_catches_a_wrong_import(tmp_path: Path) -> None:
    """A tree with the mistakes the floors exist to prevent: each one is reported."""
    pkg = tmp_path / "ood_perception"
    for room in ("pipeline", "trainer", "geometry", "replay", "commands"):
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "pipeline" / "node.py").write_text("import rclpy\n")
    (pkg / "trainer" / "loop.py").write_text("def f():\n    from ood_perception.replay import engine\n")
    (pkg / "geometry" / "calib.py").write_text("from ood_perception import pipeline\n")
    (pkg / "replay" / "run.py").write_text("from .. import cli\nfrom ood_perception.pipeline import node\n")
    (pkg / "commands" / "x.py").write_text("from ood_perception.replay import run\n")
    found = violations(pkg)
    assert found == [
        "geometry/calib.py:1: geometry -> pipeline",
        "pipeline/node.py:1: pipeline -> rclpy (ROS packages only in ros, app, cli, commands)",
        "replay/run.py:1: replay -> cli (nothing below the command line imports it)",
        "trainer/loop.py:2: trainer -> replay",
    ]


def test_every_room_is_on_a_floor() -> None:
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    rooms |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert rooms - set(MAY_IMPORT) - set(TOP) == set()
