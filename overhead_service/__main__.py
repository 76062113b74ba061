"""``python -m overhead_service``: the same as the ``overhead-service`` command."""

from overhead_service.cli import main

main()
