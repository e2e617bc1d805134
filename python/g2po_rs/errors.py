"""Exceptions of g2po_rs.

Every bad input raises a subclass of :class:`G2poError` that says which
argument is wrong and, where one row is at fault, which row (``row`` is the
0-based index in the caller's order; ``None`` when no single row is to blame).
The classes also derive from the built-in exception a caller would expect
(``ValueError`` or ``TypeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["G2poError", "InputError", "InputTypeError", "ConfigError", "InternalError"]


class G2poError(Exception):
    """Base class of every g2po_rs error.

    Attributes:
        argument: the name of the offending argument (``None`` if not one).
        row: the offending row, 0-based in the caller's order (``None`` if not one).
    """

    def __init__(self, message: str, argument: str | None = None, row: int | None = None):
        super().__init__(message)
        self.argument = argument
        self.row = row


class InputError(G2poError, ValueError):
    """A value is wrong: lengths differ, a reward is NaN, steps are out of order,
    an id is unknown, a trajectory sits in two groups, ..."""


class InputTypeError(G2poError, TypeError):
    """An argument has the wrong type, dtype, shape or memory layout, or one
    row holds an object of the wrong type (e.g. ``None`` as an anchor)."""


class ConfigError(G2poError, ValueError):
    """An estimator option is out of its domain."""


class InternalError(G2poError, RuntimeError):
    """The engine failed where it never should; please report it. (Rust panics
    are caught and raised as this, never as ``PanicException``.)"""
