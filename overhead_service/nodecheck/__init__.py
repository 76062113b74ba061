"""``node-check``: the facts of this node that matter for L1VH (mshv) and kvm, as the ``node`` object
requests accept (:mod:`overhead_service.nodecheck.checks`) and as a table
(:mod:`overhead_service.nodecheck.system`).  Standard library only.
"""

from __future__ import annotations

from overhead_service.nodecheck.checks import (
    PROBES,
    CommandRunner,
    Completed,
    FileSystem,
    check_node,
    inspect_node,
)
from overhead_service.nodecheck.system import (
    HostFileSystem,
    RecordedRunner,
    SubprocessRunner,
    format_table,
    main,
    memlock_limits,
)

__all__ = [
    "PROBES",
    "CommandRunner",
    "Completed",
    "FileSystem",
    "HostFileSystem",
    "RecordedRunner",
    "SubprocessRunner",
    "check_node",
    "format_table",
    "inspect_node",
    "main",
    "memlock_limits",
]
