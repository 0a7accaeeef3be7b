"""The run report: report.md with plots (PNG) from a pipeline's results."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from services.common.reward import OUTCOMES

COLOURS = {"fooled": "#2a9d8f", "caught": "#e76f51", "invalid": "#8d99ae", "unparseable": "#d4a373",
           "excluded": "#cccccc"}


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
        versions_h = [h["version"] for h in history]
        right.plot(versions_h, [h["reward_total"] for h in history], "o-", color="#264653", label="batch reward")
        right.plot(versions_h, [h["valid_rate"] for h in history], "s--", color="#8d99ae", label="valid-edit rate")
        right.plot(versions_h, [h["fool_rate"] for h in history], "^-", color="#2a9d8f", label="fool rate (valid)")
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


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _version_table(history: list[dict]) -> list[str]:
    lines = ["| version | rollouts | reward | valid | fool (valid) | fool inject | fool paraphrase | detection | "
             "false flag | KL | entropy | IS ratio max | staleness | idle |", "|" + "---|" * 14]
    for h in history:
        lines.append(f"| v{h['version']} | {h['rollouts']} | {h['reward_total']:+.2f} | {_pct(h['valid_rate'])} | "
                     f"{_pct(h['fool_rate'])} | {_pct(h.get('fool_rate_inject'))} | "
                     f"{_pct(h.get('fool_rate_paraphrase'))} | {_pct(h.get('detection_rate'))} | "
                     f"{_pct(h.get('false_flag_rate'))} | {h['mean_kl']:.4f} | {h['entropy']:.2f} | "
                     f"{h['is_ratio_max']:.2f} | {h['staleness_mean']:.1f} | {_pct(h.get('idle_fraction'))} |")
    return lines


def _injector_eval_table(ev: dict) -> list[str]:
    rows = list((ev.get("results") or {}).items())
    if not rows:
        return []
    keys = [("parseable_rate", "parseable"), ("valid_rate", "valid edits"), ("valid_rate_inject", "valid inject"),
            ("valid_rate_paraphrase", "valid paraphrase"), ("fool_rate", "fool rate (valid)"),
            ("fool_rate_inject", "fool inject"), ("fool_rate_paraphrase", "fool paraphrase")]
    lines = ["| policy | rollouts | mean reward | " + " | ".join(label for _, label in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for label, r in rows:
        lines.append(f"| {label} | {r['rollouts']} | {r['mean_reward']:+.2f} | "
                     + " | ".join(_pct(r.get(k)) for k, _ in keys) + " |")
    lines += ["", "What each policy prefers among its valid edits (sentence position; injected error types, with "
              "the fool rate per type):", ""]
    for label, r in rows:
        types = ", ".join(f"{k} {v} (fools {r['fool_rate_by_error_type'].get(k, 0):.0%})"
                          for k, v in sorted(r.get("error_types", {}).items(), key=lambda kv: -kv[1]))
        lines.append(f"- {label}: positions {r.get('positions')}; error types: {types or 'none'}")
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
        history = rl.get("history") or []
        if history:
            lines += ["", "### Per policy version (the learner's batch for that version)", ""]
            lines += _version_table(history)
            lines += ["", f"Groups by fate at the learner: {rl.get('fates')}."]
        lines.append("")
    inj = results.get("injector_eval")
    if inj:
        lines += ["## Injector evaluation on held-out seeds", "",
                  f"{inj['held_out_seeds']} seed notes from the eval split (never RL seeds), fixed sampling seeds, "
                  "the same frozen assessor; v0 is the SFT policy.", ""]
        lines += _injector_eval_table(inj)
        lines.append("")
    ev = results.get("eval")
    if ev:
        lines += ["## Frozen assessor on MEDEC-style evaluation notes", "",
                  f"{ev['notes']} notes of at most {ev.get('max_note_chars')} characters from `{ev['reference']}`; flag rate {ev['flag_rate']:.1%}, "
                  f"{ev['unparsed']} unparseable outputs (scored as 'no error').", ""]
        lines += _eval_table(ev)
        lines.append("")
    lines += ["A tiny randomly initialised model trained for minutes on a CPU is a smoke test of the",
              "machinery, not a detector: swap `--model` for Qwen/Qwen3-4B on a GPU for real numbers.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
