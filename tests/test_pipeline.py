"""``medserl run`` end to end on the bundled demo set (no MEDEC needed), at smoke-test size."""

from __future__ import annotations

import json

from medserl_cli.cli import main


def test_the_whole_pipeline_runs_embedded_and_writes_a_report(smoke_run):
    """The run itself is tests/conftest.py's ``smoke_run`` (shared with the secrets scan)."""
    out, results = smoke_run.out, smoke_run.results
    assert "demo set" in results["data"]["label"]
    sft_data = out / "sft_data" / "sft_combined_safe.jsonl"
    kinds = [json.loads(line)["kind"] for line in sft_data.read_text().splitlines()]
    assert kinds.count("CORRECT") == kinds.count("INCORRECT") > 0
    assert results["sft"]["loss_curve"], "SFT logged a loss"
    rl = results["rl"]
    assert not rl["timed_out"] and [u["version"] for u in rl["updates"]] == [1]
    assert rl["rollouts"] >= 4 and rl["history"][0]["rollouts"] == 4
    assert results["eval"]["notes"] == 3
    report = (out / "report.md").read_text()
    for part in ("## SFT", "## RL self-play", "![RL](rl.png)", "baseline: always no error"):
        assert part in report
    assert (out / "rl.png").stat().st_size > 0 and (out / "sft_loss.png").stat().st_size > 0


def test_cli_rejects_nonsense_sizes_with_a_message(capsys):
    assert main(["run", "--rl-updates", "0"]) == 2
    assert "--rl-updates must be at least 1" in capsys.readouterr().err
