"""Node parameter values as ROS users write them: type coercion and unknown-name warnings.

ROS-free, shared by the nodes (``ros/``), ``ood-perception run`` (``ros/runner.py``) and replay
(``replay/params.py``), so a params file means the same everywhere.

* :func:`coerce_params` checks each value against the type of its default in the node's parameter
  table and converts it where that loses nothing: an integer for a double (YAML writes ``1`` for
  1.0: ``slop: 1``), an integral double for an integer (``qos_depth: 5.0``), integers in a double
  array. Anything else (``stale_timeout: "fast"``, ``qos_depth: 5.5``, ``true`` for a number) is
  refused with one line naming the parameter, its expected type and the value given. The nodes
  declare their parameters with ``dynamic_typing`` so that rclpy accepts any type at declaration
  (a statically typed rclpy parameter raises ``InvalidParameterTypeException`` out of the
  constructor for an int given for a double) and the check here decides, at configure.
* :func:`unknown_names` and :func:`params_file_warnings`: names that match no parameter and
  params-file sections that match no node, each with a did-you-mean (``difflib``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Parameters every rclpy node declares itself or accepts by prefix (never reported as unknown).
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")
ROS_BUILTIN_PREFIXES = ("qos_overrides.",)

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number (double)", str: "a string"}


def _given(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"parameter {name} must be a number (double), got {_given(value)}")
    return float(value)


def coerce_value(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (the parameter table's), converted where lossless.

    Raises:
        ValueError: one line naming the parameter, the expected type and the value given.
    """
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"parameter {name} must be a boolean (true/false), got {_given(value)}")
        return value
    if isinstance(default, float):
        return _number(name, value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"parameter {name} must be an integer, got {_given(value)}")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ValueError(f"parameter {name} must be an integer, got {_given(value)}")
        return int(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"parameter {name} must be a string, got {_given(value)}")
        return value
    if default is None or isinstance(default, (list, tuple)):  # double arrays (None = unset by default)
        if value is None:
            if default is None:
                return None
            raise ValueError(f"parameter {name} must be a list of numbers, got None")
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ValueError(f"parameter {name} must be a list of numbers, got {_given(value)}")
        items = list(value)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
            raise ValueError(f"parameter {name} must be a list of numbers, got {items!r}")
        return [float(v) for v in items]
    return value


def coerce_params(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every parameter of ``defaults`` coerced (:func:`coerce_value`); other keys
    are passed through unchanged. Raises ValueError naming the first bad parameter."""
    return {k: (coerce_value(k, v, defaults[k]) if k in defaults else v) for k, v in values.items()}


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def is_builtin(name: str) -> bool:
    """A parameter rclpy itself declares or accepts (``use_sim_time``, ``qos_overrides.*``)."""
    return name in ROS_BUILTIN_PARAMETERS or name.startswith(ROS_BUILTIN_PREFIXES)


def unknown_names(names: Iterable[str], known: Iterable[str], where: str) -> list[str]:
    """One warning per name in ``names`` that is neither in ``known`` nor an rclpy built-in, e.g.
    ``"fusion_segmentation: unknown parameter 'stale_timout' (ignored); did you mean 'stale_timeout'?"``
    (``where`` '' = no prefix)."""
    known = list(known)
    prefix = f"{where}: " if where else ""
    return [f"{prefix}unknown parameter {n!r} (ignored){_suggest(n, known)}"
            for n in names if n not in known and not is_builtin(n)]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter dicts -> dotted names (``lidar_to_camera: {xyz: ...}`` -> ``lidar_to_camera.xyz``),
    as rclpy reads a params file."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def section_node(key: str) -> str:
    """The node name a params-file section applies to (``/ns/fusion_segmentation`` -> ``fusion_segmentation``)."""
    return str(key).strip("/").split("/")[-1]


def params_file_warnings(data: Mapping[str, Any], tables: Mapping[str, Sequence[str] | None], source: str,
                         check_names: bool = True) -> list[str]:
    """Warnings for a parsed ROS params file: sections that match none of the nodes in ``tables``
    (``/**`` and ``/*`` match every node) and, with ``check_names``, parameter names that are in
    no table of the nodes the section applies to (a wildcard section: in no table at all).

    Args:
        data: the YAML mapping (section -> ``{ros__parameters: {...}}``).
        tables: node name -> its parameter names (None: the node is known, its names are not checked).
        source: the file, for the messages.
    """
    out: list[str] = []
    nodes = list(tables)
    for key, section in data.items():
        params = section.get("ros__parameters") if isinstance(section, Mapping) else None
        wildcard = str(key).strip("/") in ("**", "*")
        node = section_node(key)
        if not wildcard and node not in tables:
            out.append(f"{source}: section {key!r} matches no node of this package ({', '.join(nodes)}): "
                       f"ignored{_suggest(node, nodes)}")
            continue
        if not check_names or not isinstance(params, Mapping):
            continue
        applies = nodes if wildcard else [node]
        names = [t for n in applies if tables[n] is not None for t in tables[n]]  # type: ignore[union-attr]
        if wildcard and any(tables[n] is None for n in applies):
            continue  # a node whose names are not known here may use any of them
        if names:
            out += unknown_names(flatten(params), names, f"{source}: {key}")
    return out
