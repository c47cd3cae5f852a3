"""Configured ``class_names`` against the class names the annotations use: the listing and the
"did you mean" hints of the errors raised when they do not match (``docs/robustness.md``).

Datasets that parse names (VOC XML ``<name>``, COCO categories) keep ``seen_class_counts``:
annotated name -> number of objects, every object counted, whether or not its class is in
``class_names``. These helpers turn such a mapping into text; they raise nothing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

#: Names listed in a message at most (the most frequent first).
MAX_LISTED = 20

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def _key(name: str) -> str:
    """``"Dining Table"`` -> ``"diningtable"``: case, spaces, ``_`` and ``-`` do not count."""
    return _NOT_ALNUM.sub("", name.casefold())


def count_listing(counts: Mapping[str, int], limit: int = MAX_LISTED) -> str:
    """``"'raccoon' (12), 'dog' (3)"``: by decreasing count, then name; at most ``limit``
    names, then ``", ... and N more"``."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    text = ", ".join(f"{name!r} ({count})" for name, count in ranked[:limit])
    if len(ranked) > limit:
        text += f", ... and {len(ranked) - limit} more"
    return text


def class_name_hints(class_names: Sequence[str], seen: Mapping[str, int]) -> dict[str, str]:
    """Configured name -> the annotated name it probably means, for each configured name that
    no annotation uses: the same name up to case, spaces, ``_`` and ``-`` (``'Raccoon'`` ->
    ``'raccoon'``, ``'dining table'`` -> ``'diningtable'``), else a close spelling
    (``difflib``, ratio >= 0.8: ``'racoon'`` -> ``'raccoon'``)."""
    by_key = {_key(name): name for name in sorted(seen)}
    hints: dict[str, str] = {}
    for name in class_names:
        if name in seen:
            continue
        match = by_key.get(_key(name))
        if match is None:
            close = difflib.get_close_matches(name, sorted(seen), n=1, cutoff=0.8)
            match = close[0] if close else None
        if match is not None:
            hints[name] = match
    return hints


def mismatch_details(class_names: Sequence[str], seen: Mapping[str, int]) -> str:
    """``"the annotations name: 'raccoon' (12); did you mean 'raccoon' for 'Raccoon'? (class
    names must match the annotations exactly, case included)"``; ``"the annotations contain no
    objects"`` when ``seen`` is empty."""
    if not seen:
        return "the annotations contain no objects"
    text = f"the annotations name: {count_listing(seen)}"
    hints = class_name_hints(class_names, seen)
    if hints:
        guesses = ", ".join(f"{found!r} for {name!r}" for name, found in hints.items())
        text += (
            f"; did you mean {guesses}? (class names must match the annotations exactly, "
            "case included)"
        )
    return text
