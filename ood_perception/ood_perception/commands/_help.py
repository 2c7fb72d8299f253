"""Plain-text ``--help``: the subcommands reuse module docstrings (reStructuredText for the API docs)
as descriptions; this turns their markup into what a terminal should show.

``plain`` drops Sphinx roles (``:func:`~a.b.c``` -> ``c``, ``:mod:`a.b``` -> ``a.b``), inline-literal
and Markdown backticks (a literal with a space in it gets single quotes, so a command stays one
unit in the sentence) and the ``::`` that announces a literal block. :class:`PlainHelpFormatter`
applies it to descriptions, epilogs and every argument's help; descriptions written on one line
are wrapped as usual, docstrings (several lines) keep their layout.
"""

from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc|ref|doc):`(~?)\.?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`")


def _literal(match: re.Match[str]) -> str:
    text = match.group(1) if match.group(1) is not None else match.group(2)
    return f"'{text}'" if " " in text else text


def plain(text: str) -> str:
    """``text`` without reStructuredText/Markdown inline markup (see the module docstring)."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    text = _LITERAL.sub(_literal, text)
    return re.sub(r"(?<=\S)::$", ":", text, flags=re.MULTILINE)


class PlainHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help without markup; multi-line descriptions keep their layout, one-line ones are wrapped."""

    def _format_text(self, text: str) -> str:
        text = plain(text)
        if "\n" not in text.strip():
            return argparse.HelpFormatter._format_text(self, text)
        return super()._format_text(text)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return plain(action.help) if action.help else action.help


def task_summary(doc: str | None, fallback: str) -> str:
    """One-line help of a ``train`` task from its module docstring: the first line without the
    leading command (``ood-perception train X``: ...)."""
    first = (doc or "").strip().splitlines()[0] if (doc or "").strip() else fallback
    first = re.sub(r"^``[^`]*``:\s*", "", first)
    return plain(first).rstrip(".")
