"""tests/reliability: the fuzz suites' case tables, printed at the end of the session (and written to
``$MEDSERL_FUZZ_REPORT`` as JSON when it is set), so a run says how many cases each gRPC method and
each consumed topic got and how they ended."""

from __future__ import annotations

import json
import os

from tests.reliability import fuzzing

TITLES = {"grpc": "gRPC methods", "bus": "consumed topics", "text": "note text"}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    suites = [s for s in ("grpc", "bus", "text") if fuzzing.CASES.get(s)]
    for suite in suites:
        terminalreporter.write_sep("-", f"fuzz cases: {TITLES[suite]}")
        for line in fuzzing.table(suite):
            terminalreporter.write_line(line)
    report = os.environ.get("MEDSERL_FUZZ_REPORT")
    if report and suites:
        data = {suite: {"cases": {f"{t} {k}": n for (t, k), n in sorted(fuzzing.CASES[suite].items())},
                        "outcomes": {t: dict(c) for t, c in fuzzing.OUTCOMES.get(suite, {}).items()}}
                for suite in suites}
        with open(report, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
