"""Run the test suite. Treats pytest's exit code 5 (no tests collected) as a failure: a suite
that collects nothing has tested nothing. Kafka is started by tests/conftest.py and stopped there,
also when tests fail.
"""

from __future__ import annotations

import subprocess
import sys

NO_TESTS_COLLECTED = 5


def main() -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *sys.argv[1:]]
    rc = subprocess.call(cmd)
    if rc == NO_TESTS_COLLECTED:
        print("run_tests: pytest collected no tests; failing on purpose (exit 5 means nothing was tested)",
              file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
