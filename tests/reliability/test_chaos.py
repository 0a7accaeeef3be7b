"""Exactly-once effect under faults (issue 11): a distributed run of 1,152 rollouts over the real
broker, verifier, injector, assessor and learner each in its own process, while each service in turn
is killed with kill -9 and restarted, the broker restarts, and a consumer is paused past its session
timeout. The ledger read back from the topics and the learner's saved state must show, for the seeds
of every phase: none lost, none trained twice, one group per seed, no group split, nothing trained
past the staleness bound. The fault table is printed (``pytest -s`` or ``make reliability``)."""

from __future__ import annotations

import pytest

from tests.reliability.harness import FAULTS, fault_table, run_chaos

SEEDS_PER_FAULT = 48  # x 6 faults x 4 rollouts per group = 1,152 rollouts


@pytest.mark.kafka
@pytest.mark.timeout(900)
def test_every_seed_is_trained_once_through_kills_a_broker_restart_and_a_paused_consumer(kafka_broker, tmp_path):
    result = run_chaos(kafka_broker, kafka_broker.bootstrap, tmp_path, seeds_per_fault=SEEDS_PER_FAULT)
    table = fault_table(result)
    print("\n" + table)
    assert [p["fault"] for p in result.phases] == [name for name, _ in FAULTS], table
    total = result.total
    assert total["rollouts"] >= 1000, table
    for phase in [*result.phases, total]:
        name = phase.get("fault", "whole run")
        assert phase["lost"] == 0, f"{name}: acknowledged seeds without a fate\n{table}"
        assert phase["trained_twice"] == 0, f"{name}: a group trained twice\n{table}"
        assert phase["second_group"] == 0, f"{name}: a seed gave two groups\n{table}"
        assert phase["split"] == 0, f"{name}: a group split across steps\n{table}"
        assert phase["stale_trained"] == 0, f"{name}: trained past max_staleness\n{table}"
        assert phase["trained_groups"] + phase["disposed_untrained"] == phase["seeds"], \
            f"{name}: every seed has exactly one fate\n{table}"
    # the run did train: untrained fates (stale after a fault) are the exception
    assert total["trained_groups"] >= 0.9 * total["seeds"], table
