"""Run the nodes in one process: what ``ood-perception run`` does, without launch/launch_ros.

``launch`` and ``launch_ros`` are not installable from the registries this project uses, so
this runner starts the same nodes with the same params files (rclpy global arguments
``--ros-args --params-file FILE -r FROM:=TO``) on one ``MultiThreadedExecutor``, straight to
active. Which nodes start: those named by a top-level key of the params files
(``fusion_segmentation``, ``action_recognition``), or the ones asked for explicitly.

A section that matches none of our nodes is reported (one warning line, with a did-you-mean)
before the nodes start; parameter names a node does not have are reported by the node itself
(:func:`ood_perception.ros.common.warn_unknown_overrides`), as under ``ros2 launch``, so each
appears once. Wrongly typed values fail the node's configure with one line naming the parameter.
"""

from __future__ import annotations

import importlib
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ood_perception.pipeline.params import params_file_warnings

#: Node name -> (module, class) of the nodes this package provides.
NODES: dict[str, tuple[str, str]] = {
    "fusion_segmentation": ("ood_perception.ros.fusion_node", "FusionSegmentationNode"),
    "action_recognition": ("ood_perception.ros.recognition_node", "ActionRecognitionNode"),
}


def nodes_in_params(paths: Sequence[str | Path], warn: Any = None) -> list[str]:
    """Our node names that have a section in the given ROS params files (in NODES order).
    ``warn`` (if given) is called with one line per section that matches no node of ours."""


    found: set[str] = set()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"params file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a ROS params file maps node names to {{ros__parameters: ...}}")
        for key, section in data.items():
            if not isinstance(section, dict) or "ros__parameters" not in section:
                raise ValueError(f"{path}: section {key!r} has no 'ros__parameters'")
            name = str(key).strip("/").split("/")[-1]
            if name in NODES:
                found.add(name)
        if warn is not None:
            for line in params_file_warnings(data, dict.fromkeys(NODES), str(path), check_names=False):
                warn(line)
    return [n for n in NODES if n in found]


def run_nodes(
    params_files: Sequence[str | Path],
    nodes: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    remaps: Sequence[str] = (),
    duration: float | None = None,
    log: Any = print,
    transport: bool = True,
) -> int:
    """Start ``nodes`` (default: those in the params files) active and spin until SIGINT/SIGTERM or
    ``duration`` seconds. Returns 0, or 1 when a node fails to become active.

    ``transport``: apply the shipped DDS transport profile first (:mod:`ood_perception.ros.transport`;
    variables you set yourself win); it only takes effect if no DDS participant exists yet in this process.
    """

    from ood_perception.ros.transport import apply_transport_profile

    if transport:
        apply_transport_profile(log=lambda m: log(f"ood-perception run: {m}"))

    import rclpy  # lazy: rclpy after the transport profile is in the environment (read when the first DDS participant starts)
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    in_files = nodes_in_params(params_files, warn=lambda line: log(f"ood-perception run: warning: {line}"))
    names = list(nodes) if nodes else in_files
    unknown = [n for n in names if n not in NODES]
    if unknown:
        raise ValueError(f"unknown node(s) {unknown}; known: {list(NODES)}")
    if not names:
        raise ValueError(f"none of the params files {list(map(str, params_files))} has a section for {list(NODES)}")
    args = ["ood-perception-run", "--ros-args"]
    for p in params_files:
        args += ["--params-file", str(Path(p).resolve())]
    for r in remaps:
        if ":=" not in r:
            raise ValueError(f"remap must look like FROM:=TO, got {r!r}")
        args += ["-r", r]
    ctx = rclpy.context.Context()
    rclpy.init(args=args, context=ctx)
    ex = MultiThreadedExecutor(context=ctx)
    created: list[Any] = []
    stop = {"flag": False}

    def _stop(*_: Any) -> None:
        stop["flag"] = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for name in names:
            module, cls = NODES[name]
            node_cls = getattr(importlib.import_module(module), cls)
            extra = [Parameter(k, value=v) for k, v in (overrides or {}).items()]
            try:
                node = node_cls(name, context=ctx, parameter_overrides=[Parameter("autostart", value=False), *extra])
            except Exception as exc:  # noqa: BLE001 - one clear line (cli), never a half-built node's traceback
                raise ValueError(f"node {name} could not be created: {type(exc).__name__}: {exc}") from None
            created.append(node)
            if not node.autostart():
                log(f"ood-perception run: node {name} failed to become active (see the log above)")
                return 1
            ex.add_node(node)
            log(f"ood-perception run: {name} active")
        deadline = None if duration is None else time.monotonic() + float(duration)
        while not stop["flag"] and ctx.ok() and (deadline is None or time.monotonic() < deadline):
            ex.spin_once(timeout_sec=0.1)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        ex.shutdown()
        for node in created:
            node.destroy_node()
        if ctx.ok():
            rclpy.shutdown(context=ctx)
