"""The bearer tokens a benchmark or test server is started with, and creating its schema."""

from __future__ import annotations

import json

from overhead_service.store import Store

__all__ = ["ADMIN_TOKEN", "INGEST_TOKEN", "TOKENS", "create_schema"]

INGEST_TOKEN = "ingest-token-for-tests-0123456789"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
# The TOKENS setting: "bench-ci" may ingest, "alice" is an admin.
TOKENS = json.dumps(
    {
        "tokens": [
            {"name": "bench-ci", "role": "ingest", "token": INGEST_TOKEN},
            {"name": "alice", "role": "admin", "token": ADMIN_TOKEN},
        ]
    }
)


def create_schema(url: str) -> None:
    """What ``overhead-service init-db`` does."""
    store = Store(url)
    try:
        store.create_schema()
    finally:
        store.dispose()
