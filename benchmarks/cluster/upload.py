"""Where records go: ``POST /v1/measurements`` of the overhead service, and/or a JSON Lines file.

Uploads are idempotent on the service's side (a record whose ``runId``/``sampleId`` is stored
already counts as a duplicate), so a retried request, or a whole Job retried by Kubernetes,
never counts a sample twice. Transient failures (no connection, 429, 5xx) are retried with
backoff; a refusal (401, 403, 422…) is not: it will not change by asking again.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import requests

__all__ = ["JsonLinesSink", "UploadError", "UploadResult", "Uploader"]

log = logging.getLogger(__name__)

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF: Final = 60.0


class UploadError(Exception):
    """The service refused the records, or could not be reached after the retries."""


@dataclass(frozen=True, slots=True)
class UploadResult:
    stored: int
    duplicates: int


class Uploader:
    """Posts batches of records with a bearer token (role ``ingest``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        retries: int = 5,
        backoff_seconds: float = 2.0,
        timeout_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not token:
            raise UploadError("no bearer token to upload with (role ingest)")
        self.endpoint = url.rstrip("/") + "/v1/measurements"
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers.update(
            {"Authorization": f"Bearer {token}", "User-Agent": "overhead-service-cluster-benchmark/1"}
        )

    def close(self) -> None:
        self._session.close()

    def upload(self, records: Sequence[dict[str, Any]]) -> UploadResult:
        if not records:
            return UploadResult(0, 0)
        body = json.dumps({"records": list(records)}, separators=(",", ":"))
        for attempt in range(self.retries + 1):
            try:
                response = self._session.post(
                    self.endpoint,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=self.timeout_seconds,
                )
            except requests.RequestException as exc:
                problem = str(exc)
            else:
                if response.status_code == 200:
                    answer = response.json()
                    return UploadResult(int(answer["stored"]), int(answer["duplicates"]))
                problem = f"{response.status_code}: {response.text[:2000]}"
                if response.status_code not in RETRY_STATUSES:
                    raise UploadError(f"POST {self.endpoint} refused: {problem}")
            if attempt == self.retries:
                raise UploadError(f"POST {self.endpoint} failed after {attempt + 1} attempts: {problem}")
            delay = min(self.backoff_seconds * 2**attempt, MAX_BACKOFF) * (0.5 + random.random() / 2)
            log.warning("upload failed (%s); retrying in %.1f s", problem, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


class JsonLinesSink:
    """Appends each record as one JSON line to a file (``-``: standard output)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream: IO[str] = sys.stdout if path == "-" else Path(path).open("a", encoding="utf-8")  # noqa: SIM115

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self._stream.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
