"""The run report: report.md with plots (PNG) from a pipeline's results."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

OUTCOMES = ("fooled", "caught", "invalid", "unparseable")
COLOURS = {"fooled": "#2a9d8f", "caught": "#e76f51", "invalid": "#8d99ae", "unparseable": "#d4a373"}


def _plot_sft(sft: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not sft.get("loss_curve"):
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps, losses = zip(*sft["loss_curve"], strict=True)
    ax.plot(steps, losses, label="train loss", color="#264653")
    if sft.get("eval_curve"):
        e_steps, e_losses = zip(*sft["eval_curve"], strict=True)
        ax.plot(e_steps, e_losses, "o--", label="eval loss", color="#e76f51")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("SFT of the tiny policy (both roles)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _rollouts(rl: dict) -> list[dict]:
    path = Path(rl.get("rollouts_file", ""))
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _plot_rl(rl: dict, rollouts: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rollouts:
        return False
    by_version: dict[int, Counter] = defaultdict(Counter)
    for r in rollouts:
        by_version[r["version"]][r["outcome"] or "unknown"] += 1
    versions = sorted(by_version)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    bottom = [0] * len(versions)
    for outcome in OUTCOMES:
        counts = [by_version[v][outcome] for v in versions]
        left.bar([str(v) for v in versions], counts, bottom=bottom, label=outcome, color=COLOURS[outcome])
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    left.set_xlabel("policy version that wrote the rollout")
    left.set_ylabel("rollouts")
    left.set_title("Rollout outcomes")
    left.legend(fontsize=8)
    history = rl.get("history") or []
    if history:
        right.plot([h["version"] for h in history], [h["mean_reward"] for h in history], "o-", color="#264653",
                   label="mean reward")
        right.plot([h["version"] for h in history], [h["mean_kl"] for h in history], "s--", color="#e9c46a",
                   label="mean KL to SFT")
        right.axhline(0, color="grey", lw=0.5)
        right.legend(fontsize=8)
    right.set_xlabel("learner update (new version)")
    right.set_title("REINFORCE++ learner")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _eval_table(ev: dict) -> list[str]:
    keys = [("error_flag_accuracy", "error flag accuracy"), ("error_sentence_accuracy", "error sentence accuracy"),
            ("rouge1_composite", "ROUGE-1 composite"), ("aggregate_composite", "ROUGE aggregate composite")]
    present = [(k, label) for k, label in keys if k in ev["assessor"]]
    lines = ["| system | " + " | ".join(label for _, label in present) + " |",
             "|---|" + "---|" * len(present)]
    for name, scores in (("frozen assessor (tiny SFT model)", ev["assessor"]),
                         ("baseline: always no error", ev["baseline_no_error"]),
                         ("baseline: always the last sentence", ev["baseline_last_sentence"])):
        lines.append(f"| {name} | " + " | ".join(_fmt(scores.get(k)) for k, _ in present) + " |")
    return lines


def write_report(results: dict, out: Path) -> Path:
    out = Path(out)
    rl = results.get("rl") or {}
    rollouts = _rollouts(rl)
    lines = ["# MedSeRL run report", ""]
    data = results.get("data", {})
    lines += [f"Data: {data.get('label')}; pairs per split: {data.get('summary', {}).get('pairs_per_split')}.", ""]
    lines += ["## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in results.get("stage_seconds", {}).items()]
    sft_data = results.get("sft_data") or {}
    lines += ["", "## SFT set", "",
              f"Examples: {json.dumps(sft_data.get('examples', sft_data.get('combined', {})))}; "
              f"see `sft_data/report.json` for acceptance per verifier check and cost.", ""]
    tiny = results.get("tiny_model") or {}
    lines += ["## Tiny policy", "",
              f"Qwen3 architecture, {tiny.get('parameters')} parameters, vocabulary {tiny.get('vocab_size')}, "
              f"{tiny.get('weights_mb')} MB (`{tiny.get('path')}`).", ""]
    sft = results.get("sft") or {}
    if _plot_sft(sft, out / "sft_loss.png"):
        first, last = sft["loss_curve"][0][1], sft["loss_curve"][-1][1]
        lines += ["## SFT", "", f"{sft['steps']} steps in {sft['seconds']} s on {sft['train_examples']} chats; "
                  f"train loss {first:.3f} -> {last:.3f}.", "", "![SFT loss](sft_loss.png)", ""]
    if rl:
        outcomes = Counter(r["outcome"] for r in rollouts)
        verified = sum(r["verified"] for r in rollouts)
        lines += ["## RL self-play", "",
                  f"{rl.get('seed_notes')} seed notes, {len(rollouts)} scored rollouts, "
                  f"{len(rl.get('updates', []))} policy versions published"
                  + (" (stopped at the time limit)" if rl.get("timed_out") else "") + ".", "",
                  "| outcome | rollouts |", "|---|---|"]
        lines += [f"| {k} | {outcomes.get(k, 0)} |" for k in OUTCOMES]
        if rollouts:
            lines += ["", f"Verifier pass rate: {verified / len(rollouts):.1%}. Failed checks: "
                      f"{dict(Counter(c for r in rollouts for c in r['failed_checks']).most_common(6))}."]
        if _plot_rl(rl, rollouts, out / "rl.png"):
            lines += ["", "![RL](rl.png)"]
        lines.append("")
    ev = results.get("eval")
    if ev:
        lines += ["## Frozen assessor on MEDEC-style evaluation notes", "",
                  f"{ev['notes']} notes of at most {ev.get('max_note_chars')} characters from `{ev['reference']}`; flag rate {ev['flag_rate']:.1%}, "
                  f"{ev['unparsed']} unparseable outputs (scored as 'no error').", ""]
        lines += _eval_table(ev)
        lines.append("")
    lines += ["A tiny randomly initialised model trained for minutes on a CPU is a smoke test of the",
              "machinery, not a detector: swap `--model-name` for Qwen/Qwen3-4B on a GPU for real numbers.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
