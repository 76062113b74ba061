"""Every exception the package raises on purpose, in one place.

::

    OverheadServiceError                  base class
    ├── InputError (ValueError)           the caller's data is wrong; carries the JSON path  -> 422
    │   ├── InvalidQuantity               not a Kubernetes quantity
    │   ├── InvalidRatio                  a ratio Go's ParseFloat rejects, not finite, or overflowing
    │   ├── RejectedByKubeVirt            well formed, but KubeVirt refuses it (admission, virt-config)
    │   ├── InexactNumber                 a quantity arrived as a float: decode again exactly
    │   ├── UnknownTable (LookupError)    a table id that does not exist                      -> 404 / 422
    │   │   └── TableNotFound             ... named in the URL                                -> 404
    │   ├── InvalidRecords                measurement records refused: every bad one, by index
    │   ├── NotEnoughData                 too few measurements for a fit or an evaluation
    │   ├── NotInTable                    the table has no model (or no components) for that
    │   └── Conflict                      the request does not fit the current state            -> 409
    │       ├── ActivationRefused         a table that does not meet its coverage/sample bar
    │       ├── TableExists               a table id already stored (tables are immutable)
    │       └── NothingToRollBack         no activation left to undo for a hypervisor and arch
    └── TableFormatError                  a calibration table document is malformed

The web layer turns an :class:`InputError` into an RFC 9457 ``application/problem+json``
document with :func:`problem`; the batch endpoint and the CLI use the same function so that a
problem looks the same wherever it is reported.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActivationRefused",
    "Conflict",
    "InexactNumber",
    "InputError",
    "InvalidQuantity",
    "InvalidRatio",
    "NotEnoughData",
    "NotInTable",
    "InvalidRecords",
    "NothingToRollBack",
    "OverheadServiceError",
    "RejectedByKubeVirt",
    "TableExists",
    "TableFormatError",
    "TableNotFound",
    "UnknownTable",
    "http_status",
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

    def problems(self) -> list[dict[str, str]]:
        """The ``errors`` member of the problem document: one ``{"path", "message"}`` per problem."""
        return [{"path": self.path, "message": self.detail}]

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


class RejectedByKubeVirt(InputError):
    """Well-formed input that KubeVirt itself refuses (its VMI admission, or virt-config, which
    ignores such a configuration), so there is no pod to answer about."""

    kind = "rejected-by-kubevirt"
    title = "Rejected by KubeVirt"


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


class TableNotFound(UnknownTable):
    """The table named in the URL (``/v1/tables/{id}``) does not exist: 404 whatever its path."""


class NotEnoughData(InputError):
    """The selected measurements are too few for what was asked (a fit, an evaluation)."""

    kind = "not-enough-data"
    title = "Not enough data"


class NotInTable(InputError):
    """The table exists but models nothing for what was asked (hypervisor, arch or scope)."""

    kind = "not-in-table"
    title = "Not in table"


class Conflict(InputError):
    """The request is well formed but conflicts with the current state."""

    status = 409
    kind = "conflict"
    title = "Conflict"


class ActivationRefused(Conflict):
    """A table may not become active: not enough held-out coverage or samples, and not forced."""

    kind = "activation-refused"
    title = "Activation refused"


class InvalidRecords(InputError):
    """Some measurement records of a batch are invalid: one problem per bad record, all of them.

    ``errors`` holds each bad record's first problem, with paths such as ``records[3].vm.vcpus``.
    """

    kind = "invalid-records"
    title = "Invalid measurement records"

    def __init__(self, errors: list[InputError], *, path: str = "records") -> None:
        if not errors:
            raise ValueError("InvalidRecords needs at least one error")
        first = errors[0]
        count = f"{len(errors)} invalid records" if len(errors) > 1 else "1 invalid record"
        super().__init__(path, f"{count}, nothing stored; first: {first.path}: {first.detail}")
        self.errors = list(errors)

    def problems(self) -> list[dict[str, str]]:
        return [{"path": error.path, "message": error.detail} for error in self.errors]


class TableExists(Conflict):
    """A calibration table with this id is already stored; stored tables never change."""

    kind = "table-exists"
    title = "Table exists"

    def __init__(self, table_id: str) -> None:
        super().__init__("id", f"a table with id {table_id!r} already exists, and tables are immutable")
        self.table_id = table_id


class NothingToRollBack(Conflict):
    """A rollback found no activation to undo for this hypervisor and architecture."""

    kind = "nothing-to-roll-back"
    title = "Nothing to roll back"

    def __init__(self, hypervisor: str, arch: str) -> None:
        super().__init__("", f"no activation to roll back for hypervisor {hypervisor!r} and arch {arch!r}")
        self.hypervisor = hypervisor
        self.arch = arch


class TableFormatError(OverheadServiceError):
    """A calibration table document does not follow the table format."""


def problem(error: InputError, *, status: int | None = None) -> dict[str, Any]:
    """The RFC 9457 problem document for ``error``."""
    return {
        "type": PROBLEM_BASE + error.kind,
        "title": error.title,
        "status": status if status is not None else error.status,
        "detail": str(error),
        "errors": error.problems(),
    }


def http_status(error: InputError) -> int:
    """The HTTP status of ``error``: its own, except that an unknown table named by a field of the
    request (the error has a path) is bad input (422); only a table named in the URL is 404."""
    if isinstance(error, UnknownTable) and error.path and not isinstance(error, TableNotFound):
        return 422
    return error.status
