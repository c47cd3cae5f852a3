"""Plain-text tables for evaluation reports (no third-party dependency)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_number(value: float | None, *, scale: float = 100.0, digits: int = 2) -> str:
    """Format a metric in percent (``0.5036 -> "50.36"``); NaN / None -> ``"n/a"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value * scale:.{digits}f}"


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, align: str | None = None
) -> str:
    """Render ``rows`` under ``headers`` as a pipe-separated, column-aligned table.

    Args:
        align: one character per column, ``"l"`` or ``"r"``; default: the first
            column left-aligned (names), the others right-aligned (numbers).
    """
    columns = [list(headers), *[list(r) for r in rows]]
    if any(len(r) != len(headers) for r in columns):
        raise ValueError("every table row must have as many cells as there are headers")
    widths = [max(len(r[i]) for r in columns) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l'/'r' per column, got {align!r}")

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *[line(r) for r in rows]])
