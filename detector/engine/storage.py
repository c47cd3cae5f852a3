"""Scalars recorded during training (losses, lr, speed, validation metrics) for the writers."""

from __future__ import annotations

from collections import deque


class ScalarStorage:
    """Per-name history of ``(iteration, value)``, the latest ``max_history`` points each.

    Names are the TensorBoard tags: ``train/loss_cls``, ``train/lr``, ``val/AP``, ... . Every
    point also gets a sequence number; a writer keeps the cursor :meth:`since` returned and
    asks for the points put after it, so several writers share one storage and none misses a
    point recorded late for an iteration (e.g. the final evaluation).
    """

    def __init__(self, *, max_history: int = 10000) -> None:
        if max_history <= 0:
            raise ValueError(f"max_history must be positive, got {max_history}")
        self.max_history = max_history
        self._history: dict[str, deque[tuple[int, int, float]]] = {}
        self._seq = 0

    def put(self, name: str, value: float, iteration: int) -> None:
        """Record ``value`` for ``name`` at ``iteration``."""
        self._seq += 1
        history = self._history.setdefault(name, deque(maxlen=self.max_history))
        history.append((self._seq, iteration, float(value)))

    def latest(self, name: str) -> tuple[int, float] | None:
        """The last ``(iteration, value)`` of ``name``, or ``None`` if never recorded."""
        history = self._history.get(name)
        return history[-1][1:] if history else None

    def since(self, cursor: int) -> tuple[dict[str, list[tuple[int, float]]], int]:
        """``({name: [(iteration, value), ...]}, new_cursor)``: the points put after
        ``cursor`` (0: all kept points), oldest first; names without new points are left out."""
        out: dict[str, list[tuple[int, float]]] = {}
        for name, history in self._history.items():
            points = []
            for seq, iteration, value in reversed(history):  # newest first: stop at old ones
                if seq <= cursor:
                    break
                points.append((iteration, value))
            if points:
                out[name] = points[::-1]
        return out, self._seq
