"""Does self-play learn beyond seed noise? ``make run``'s RL stage and injector evaluation, 3 seeds.

From one finished run (its prepared data and SFT policy), each seed runs self-play from v0 (the SFT
policy) for the same number of versions, then evaluates v0 and the final version on the same
held-out seed notes with the same sampling seeds. Printed: per seed, v0 and final held-out reward
and fool rate; the mean gain; the seed-to-seed spread (max - min of the final values).

    python bench/bench_selfplay_seeds.py --run runs/latest [--seeds 0 1 2] [--versions 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/latest", help="a finished `medserl run` folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--versions", type=int, default=0, help="default: the run's rl_updates")
    parser.add_argument("--out", default="", help="default: <run>/seeds")
    parser.add_argument("--learning-rate", type=float, default=0.0, help="default: the run's rl_learning_rate")
    parser.add_argument("--eval-seed-notes", type=int, default=0, help="default: the run's eval_seed_notes")
    parser.add_argument("--reward", choices=("ladder", "flat"), default="ladder",
                        help="flat: -1 for every failure (the reward ablation)")
    args = parser.parse_args()

    from medserl_cli.pipeline import PipelineConfig, stage_injector_eval, stage_rl

    run = Path(args.run)
    summary = json.loads((run / "summary.json").read_text())
    config = PipelineConfig(**{k: v for k, v in summary["config"].items() if k in PipelineConfig.__dataclass_fields__})
    config.progress = False
    if args.versions:
        config.rl_updates = args.versions
    if args.learning_rate:
        config.rl_learning_rate = args.learning_rate
    if args.eval_seed_notes:
        config.eval_seed_notes = args.eval_seed_notes
    sft, data = summary["sft"], summary["data"]
    rows = []
    for seed in args.seeds:
        out = Path(args.out or run / f"seeds-{args.reward}") / f"seed-{seed}"
        out.mkdir(parents=True, exist_ok=True)
        config.seed = seed
        rl = stage_rl(config, out, sft, data, reward=args.reward)
        ev = stage_injector_eval(config, out, sft, rl, data)
        (v0_label, v0), (final_label, final) = list(ev["results"].items())
        rows.append({"seed": seed, "versions": len(rl["updates"]), "rollouts": rl["rollouts"],
                     "v0_reward": v0["mean_reward"], "final_reward": final["mean_reward"],
                     "v0_fool": v0["fool_rate"], "final_fool": final["fool_rate"],
                     "v0_valid": v0["valid_rate"], "final_valid": final["valid_rate"]})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nself-play over {len(rows)} seeds ({config.rl_updates} versions each), held-out seeds of {run}")
    print(f"{'seed':>5} {'versions':>9} {'reward v0':>10} {'final':>7} {'fool v0':>8} {'final':>7} "
          f"{'valid v0':>9} {'final':>7}")
    for r in rows:
        print(f"{r['seed']:>5} {r['versions']:>9} {r['v0_reward']:>+10.3f} {r['final_reward']:>+7.3f} "
              f"{r['v0_fool']:>8.1%} {r['final_fool']:>7.1%} {r['v0_valid']:>9.1%} {r['final_valid']:>7.1%}")
    for key in ("reward", "fool", "valid"):
        gains = [r[f"final_{key}"] - r[f"v0_{key}"] for r in rows]
        finals = [r[f"final_{key}"] for r in rows]
        print(f"{key:>6}: mean gain {statistics.mean(gains):+.3f}; seed-to-seed spread of the final "
              f"{max(finals) - min(finals):.3f}; every seed gained: {all(g > 0 for g in gains)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
