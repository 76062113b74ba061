"""Every exception the package raises on purpose, in one place.

::

    OverheadServiceError                  base class
    ├── InputError (ValueError)           the caller's data is wrong; carries the JSON path  -> 422
    │   ├── InvalidQuantity               not a Kubernetes quantity
    │   ├── InvalidRatio                  a ratio Go's ParseFloat rejects, not finite, or overflowing
    │   ├── InexactNumber                 a quantity arrived as a float: decode again exactly
    │   └── UnknownTable (LookupError)    a table id that does not exist                      -> 404 / 422
    └── TableFormatError                  a calibration table document is malformed

The web layer turns an :class:`InputError` into an RFC 9457 ``application/problem+json``
document with :func:`problem`; the batch endpoint and the CLI use the same function so that a
problem looks the same wherever it is reported.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InexactNumber",
    "InputError",
    "InvalidQuantity",
    "InvalidRatio",
    "OverheadServiceError",
    "TableFormatError",
    "UnknownTable",
    "problem",
]

PROBLEM_BASE = "urn:overhead-service:problem:"


class OverheadServiceError(Exception):
    """Base class of the package's own exceptions."""


class InputError(OverheadServiceError, ValueError):
    """Input data is wrong at ``path`` (a dotted JSON path such as ``vmi.spec.domain.cpu.cores``)."""

    status = 422
    kind = "invalid-input"
    title = "Invalid input"

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}" if path else detail)
        self.path = path
        self.detail = detail

    def at(self, prefix: str) -> InputError:
        """Return the same error with ``prefix`` put in front of its path."""
        path = f"{prefix}.{self.path}" if self.path and not self.path.startswith("[") else prefix + self.path
        clone = type(self).__new__(type(self))
        InputError.__init__(clone, path, self.detail)
        return clone


class InvalidQuantity(InputError):
    """A value is not a Kubernetes resource quantity."""

    kind = "invalid-quantity"
    title = "Invalid quantity"


class InvalidRatio(InputError):
    """A memory overhead ratio upstream would ignore or mis-compute."""

    kind = "invalid-ratio"
    title = "Invalid overhead ratio"


class InexactNumber(InvalidQuantity):
    """A quantity given as a JSON number reached the service as a ``float``.

    The fast JSON decoder loses the exact digits; callers catch this and decode the request again
    with :func:`overhead_service.jsonio.loads_exact`.
    """


class UnknownTable(InputError, LookupError):
    """No calibration table has this id."""

    status = 404
    kind = "unknown-table"
    title = "Unknown table"


class TableFormatError(OverheadServiceError):
    """A calibration table document does not follow the table format."""


def problem(error: InputError, *, status: int | None = None) -> dict[str, Any]:
    """The RFC 9457 problem document for ``error``."""
    return {
        "type": PROBLEM_BASE + error.kind,
        "title": error.title,
        "status": status if status is not None else error.status,
        "detail": str(error),
        "errors": [{"path": error.path, "message": error.detail}],
    }
