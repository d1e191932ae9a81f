"""Checks of numbers that come from outside (files, messages, parameters), each raising the caller's error type
with the value's name, so every module reports bad input the same way."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["finite_number", "finite_vector"]


def finite_number(x, name: str, error: type[Exception] = ValueError) -> float:
    """``x`` as a finite float; ``error`` naming ``name`` for a bool, a non-number, NaN or inf."""
    if isinstance(x, bool):
        raise error(f"{name}: expected a number, got {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise error(f"{name}: expected a number, got {x!r}") from None
    if not math.isfinite(v):
        raise error(f"{name}: must be finite, got {x!r}")
    return v


def finite_vector(a, n: int, name: str, error: type[Exception] = ValueError) -> np.ndarray:
    """``a`` as a float64 vector of ``n`` finite numbers; ``error`` naming ``name`` otherwise."""
    try:
        x = np.array(a, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise error(f"{name}: must be {n} numbers: {exc}") from None
    if x.shape != (n,):
        raise error(f"{name}: must be {n} numbers, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise error(f"{name}: contains NaN or inf: {x.tolist()}")
    return x
