"""``POST /v1/overhead`` and ``POST /v1/overhead/batch``: KubeVirt's VM-start hot path.

Per request: check the media type, decode, compute, encode. No schema library and no database:
:class:`~overhead_service.model.service.OverheadService` validates exactly what it reads.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Response

from overhead_service.web.common import json_response, service
from overhead_service.web.observe import observe_answer, observe_batch
from overhead_service.web.parsing import answer_json, json_object

__all__ = ["bp"]

bp = Blueprint("overhead", __name__, url_prefix="/v1/overhead")

_BATCH_FIELDS = frozenset({"items"})
BATCH_SLOT = threading.Lock()


@bp.post("")
def compute() -> Response:
    """The overhead of one VMI."""
    answer = answer_json(service().compute)
    observe_answer(answer)
    return json_response(answer)


@bp.post("/batch")
def compute_batch() -> Response:
    """``{"items": [request, ...]}``: the answers in order, a problem document in place of each bad item."""
    # A 10,000-item batch decodes into ~300,000 containers; the cyclic garbage collector would walk
    # them again and again while they are young (measured: decoding 5x slower).  Nothing here makes
    # reference cycles, so reference counting frees it all; the collector resumes afterwards.
    # One batch at a time per process: a 10,000-item batch takes a worker from ~60 to ~200 MiB
    # (benchmarks/bench_overhead.py measures it), so a worker's threads must not multiply that;
    # they wait before reading their bodies. Single requests never wait.
    with BATCH_SLOT, gc_paused():
        items = answer_json(_batch)
        observe_batch(items)
        return json_response({"items": items})


@contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _batch(body: Any) -> list[dict[str, Any]]:
    body = json_object(body, _BATCH_FIELDS, what="a JSON object with an 'items' array")
    return service().compute_batch(body.get("items"))
