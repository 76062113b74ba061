"""``python -m overhead_service.nodecheck [--json] [--root DIR] [--recorded DIR] [--every SECONDS]``."""

import sys

from overhead_service.nodecheck.system import main

sys.exit(main())
