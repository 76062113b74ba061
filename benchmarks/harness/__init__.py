"""What benchmarks and tests both need to run the service for real.

- :mod:`~benchmarks.harness.server`: gunicorn with the project's settings on loopback, and an
  upload client;
- :mod:`~benchmarks.harness.pg`: a throwaway PostgreSQL cluster;
- :mod:`~benchmarks.harness.records`: synthetic measurement records;
- :mod:`~benchmarks.harness.tokens`: the bearer tokens such a server is started with.

Tests import these; nothing here imports the tests.
"""
