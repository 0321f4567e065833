"""The one error type the converters raise for bad input (printed as a single line by the CLI)."""

from __future__ import annotations


class ConversionError(ValueError):
    """Bad or inconsistent input: the message is one line naming the file / tensor / field."""


def name_list(names, limit: int = 12) -> str:
    """``a, b, c (+N more)``: a bounded, sorted list for error messages."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
