"""The committed Python stubs must be exactly what protoc makes from protos/: a stale stub fails CI."""

from __future__ import annotations

import filecmp
from pathlib import Path

from tests.conftest import ROOT


def test_committed_stubs_match_the_protos(tmp_path: Path):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    generated = module.generate(tmp_path)
    assert generated, "protoc produced nothing"
    stale = []
    for path in generated:
        rel = path.relative_to(tmp_path)
        committed = ROOT / rel
        if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
            stale.append(str(rel))
    assert not stale, f"stale or missing stubs (run `make protos` and commit): {stale}"
    committed = {p.relative_to(ROOT) for p in (ROOT / "medserl" / "v1").glob("*_pb2*.py*")}
    orphans = committed - {p.relative_to(tmp_path) for p in generated}
    assert not orphans, f"stubs without a proto (delete them): {sorted(map(str, orphans))}"


def test_every_kafka_message_is_in_the_versioned_package():
    from medserl.v1 import messages_pb2 as pb

    for name in ("Note", "NotePair", "SftExample", "VerificationReport", "Rollout", "AssessorVerdict",
                 "RolloutGroup", "RewardParts", "PolicyUpdate", "DeadLetter"):
        descriptor = pb.DESCRIPTOR.message_types_by_name[name]
        assert descriptor.full_name == f"medserl.v1.{name}"
    assert "ScoredRollout" not in pb.DESCRIPTOR.message_types_by_name, "the group is the unit: no per-rollout message"
    fields = {f.name for f in pb.RolloutGroup.DESCRIPTOR.fields}
    assert {"group_id", "seed_note", "policy_version", "rollouts"} <= fields
    assert {"parse_error", "reward", "verdict", "verification"} <= {f.name for f in pb.Rollout.DESCRIPTOR.fields}
    assert {"groups_consumed", "rollouts_consumed", "step_group_ids", "rollouts_wanted"} <= \
        {f.name for f in pb.PolicyUpdate.DESCRIPTOR.fields}
