"""Uploading measurement records to ``POST /v1/measurements``, and JSON Lines files of them.

Batches are retried with exponential backoff on connection errors, timeouts and 5xx answers; this
is safe because the service stores each (runId, sampleId) once and reports the rest as
duplicates. A 4xx answer is never retried: the problem document is raised as
:class:`UploadRejected` (for 422, with every bad record's path).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import requests

__all__ = [
    "PendingUpload",
    "UploadFailed",
    "UploadRejected",
    "UploadSummary",
    "Uploader",
    "read_jsonl",
    "start_outputs",
    "write_jsonl",
]

MAX_BATCH: Final = 10_000


class UploadFailed(RuntimeError):
    """The service could not be reached (or kept answering 5xx) after every attempt."""


class UploadRejected(RuntimeError):
    """The service answered 4xx: the batch is wrong (or the token), retrying would not help."""

    def __init__(self, status: int, problem: Any) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"upload rejected with {status}: {_describe(problem)}")


def _describe(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)[:2000]
    text = str(problem.get("detail") or problem.get("title") or problem)
    errors = problem.get("errors")
    if isinstance(errors, list) and errors:
        shown = [f"{e.get('path')}: {e.get('message')}" for e in errors[:10] if isinstance(e, dict)]
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        text += "; " + "; ".join(shown) + more
    return text


@dataclass
class UploadSummary:
    stored: int = 0
    duplicates: int = 0
    duplicate_keys: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "duplicates": self.duplicates,
            "requests": self.requests,
            "retries": self.retries,
        }


class Uploader:
    """Sends records in batches to ``<url>/v1/measurements`` with a bearer token."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        batch_size: int = 500,
        attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be between 1 and {MAX_BATCH}")
        self.endpoint = url.rstrip("/") + "/v1/measurements"
        self.batch_size = batch_size
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.sleep = sleep
        self.log = log
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upload(
        self, records: Iterable[dict[str, Any]], summary: UploadSummary | None = None
    ) -> UploadSummary:
        """Upload every record (in batches); returns what the service stored and reported duplicate."""
        summary = summary if summary is not None else UploadSummary()
        for batch in _batches(records, self.batch_size):
            self.send(batch, summary)
        return summary

    def send(self, records: list[dict[str, Any]], summary: UploadSummary) -> None:
        """Upload ``records`` in one request (stored all or none), retried as :meth:`upload` says."""
        if len(records) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} records per request, got {len(records)}")
        answer = self._post(json.dumps({"records": records}).encode(), summary)
        summary.stored += int(answer.get("stored", 0))
        summary.duplicates += int(answer.get("duplicates", 0))
        summary.duplicate_keys.extend(answer.get("duplicateKeys", []))

    def _post(self, body: bytes, summary: UploadSummary) -> dict[str, Any]:
        for attempt in range(1, self.attempts + 1):
            summary.requests += 1
            problem: str
            retry_after = 0.0
            try:
                response = self.session.post(self.endpoint, data=body, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    answer = response.json()
                    if not isinstance(answer, dict):
                        raise UploadFailed(f"unexpected answer: {response.text[:500]}")
                    return answer
                if 400 <= response.status_code < 500:
                    try:
                        detail: Any = response.json()
                    except ValueError:
                        detail = response.text
                    raise UploadRejected(response.status_code, detail)
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                retry_after = _retry_after(response.headers.get("Retry-After"))
            if attempt == self.attempts:
                raise UploadFailed(f"upload to {self.endpoint} failed after {attempt} attempts: {problem}")
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            delay = min(self.max_backoff, max(delay, retry_after))
            summary.retries += 1
            if self.log is not None:
                self.log(f"upload attempt {attempt} failed ({problem}); retrying in {delay:.1f} s")
            self.sleep(delay)
        raise AssertionError("unreachable")


class PendingUpload:
    """A run's records on their way to the service, sent as each measured point's records arrive.

    ``add`` takes one point's records: they are queued and, once ``batch_size`` records wait, sent
    in one request; a point's records are never split across requests (each holds whole points, at
    most ``batch_size`` records unless one point has more), and the service stores a request all or
    nothing, so a point is stored whole or not at all.  After a failed or rejected request nothing
    more is sent (the error is kept, and printed to ``err``); :meth:`finish` then says where the
    records that were not stored are, so that ``python -m benchmarks.measure upload`` can send them
    (what was stored comes back as duplicates).
    """

    def __init__(self, uploader: Uploader | None, batch_size: int, err: TextIO) -> None:
        self.uploader = uploader
        self.batch_size = batch_size
        self.err = err
        self.pending: list[dict[str, Any]] = []
        self.summary = UploadSummary()
        self.error: str | None = None

    def add(self, records: list[dict[str, Any]]) -> None:
        """Queue one point's records; send the queue when it is full (never splitting a point)."""
        if self.uploader is None:
            return
        if self.pending and len(self.pending) + len(records) > self.batch_size:
            self.flush()
        self.pending.extend(records)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Send what waits, in one request (unless an earlier request failed)."""
        if self.uploader is None or not self.pending or self.error is not None:
            return
        try:
            self.uploader.send(list(self.pending), self.summary)
            self.pending.clear()
        except (UploadFailed, UploadRejected) as exc:
            self.error = str(exc)
            print(f"error: {exc}", file=self.err, flush=True)

    def finish(self, out: Path | None, run_id: str) -> dict[str, Any] | None:
        """Send the rest; after an upload error, say where every record not stored is (``out``, or
        a rescue file when there is none).  The run summary's ``upload`` member (None: no upload)."""
        if self.uploader is None:
            return None
        self.flush()
        if self.error is not None and out is None:
            rescue = Path(f"measure-{run_id}.jsonl")
            write_jsonl(rescue, self.pending, append=False)
            print(
                f"{len(self.pending)} records not uploaded were saved to {rescue}; send them later "
                f"with: python -m benchmarks.measure upload {rescue}",
                file=self.err,
            )
        elif self.error is not None:
            print(
                f"every record is in {out}; send them later with: python -m benchmarks.measure upload {out}",
                file=self.err,
            )
        return self.summary.as_dict() | {"error": self.error}


def start_outputs(
    out: Path | None, url: str | None, token: str | None, err: TextIO, **uploader: Any
) -> Uploader | None:
    """What both measuring commands do before their first point: empty ``--out`` (creating its
    folder) and, with ``--url``, the uploader (its progress on ``err``; ``uploader`` its options)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")
    if not url:
        return None
    return Uploader(url, token or "", log=lambda text: print(text, file=err, flush=True), **uploader)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _batches(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_jsonl(path: Path, records: Iterable[dict[str, Any]], *, append: bool = True) -> None:
    with path.open("a" if append else "w") as handle:
        for record in records:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records from a JSON Lines file (blank lines skipped); a bad line raises ValueError naming it."""
    records = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            records.append(record)
    return records
