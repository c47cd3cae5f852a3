"""The data layer's error type (no heavy imports: the results scorer uses it)."""

from __future__ import annotations


class DatasetError(ValueError):
    """A data problem (bad file, bad annotation) raised instead of skipped in strict mode, or
    a dataset left without any usable image. The message names the file and the reason."""
