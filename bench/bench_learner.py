"""Learner step time next to a bare forward+backward of the policy on the same batch, in one run.

The REINFORCE++ step needs old-policy and reference log-probs besides the forward+backward; the
learner computes them as each group arrives (``Learner.prepare``, while the batch fills), so the
step itself should cost about one forward+backward. Printed: the bare forward+backward, the step
with its groups prepared on arrival, and the step that prepares them inline (the old way).

    python bench/bench_learner.py [--rollouts 32] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_groups(tokenizer, n_rollouts: int, group_size: int, prompt_len: int, completion_len: int, seed: int):
    import random

    from medserl.v1 import messages_pb2 as pb

    rng = random.Random(seed)
    vocab = tokenizer.vocab_size
    groups = []
    for g in range(n_rollouts // group_size):
        group = pb.RolloutGroup(group_id=f"g{g}", seed_note_id=f"n{g}", mode=pb.MODE_INJECT, policy_version=0)
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        for i in range(group_size):
            completion = [rng.randrange(3, vocab) for _ in range(completion_len)]
            group.rollouts.append(pb.Rollout(
                rollout_id=f"g{g}-{i}", group_id=f"g{g}", mode=pb.MODE_INJECT, prompt_token_ids=prompt,
                completion_token_ids=completion, behaviour_logprobs=[-rng.random() * 5 for _ in completion],
                reward=pb.RewardParts(total=rng.choice([1.0, -1.0, -1.5, -2.0]), outcome="fooled")))
        groups.append(group)
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=320)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="", help="a model folder (default: build the tiny model)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.reinforce import Learner, ReinforcePPConfig, sequence_logprobs

    model_dir = args.model
    if not model_dir:
        from trainer.tiny_model import build_tiny_model

        model_dir = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", seed=0))
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device)
    config = ReinforcePPConfig(learning_rate=1e-6, rollouts_per_update=args.rollouts, micro_batch_size=args.micro_batch)
    learner = Learner(policy, reference, tokenizer, config)
    groups = make_groups(tokenizer, args.rollouts, args.group_size, args.prompt_len, args.completion_len, 0)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def bare() -> float:
        from trainer.reinforce import collate

        batch = collate([r for g in groups for r in g.rollouts], tokenizer.pad_token_id or 0)
        sync()
        started = time.perf_counter()
        policy.train()
        for i in range(0, args.rollouts, args.micro_batch):
            sl = slice(i, i + args.micro_batch)
            logp, _ = sequence_logprobs(policy, batch.input_ids[sl].to(args.device),
                                        batch.attention_mask[sl].to(args.device))
            (-(logp * batch.completion_mask[sl].to(args.device)).sum()).backward()
        policy.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - started

    def step(prepared_on_arrival: bool) -> tuple[float, float]:
        started = time.perf_counter()
        prepared = [learner.prepare(g) for g in groups]
        prepare_s = time.perf_counter() - started
        sync()
        started = time.perf_counter()
        if not prepared_on_arrival:
            prepared = [learner.prepare(g) for g in groups]
        learner.step(prepared)
        sync()
        return time.perf_counter() - started, prepare_s

    bare(), step(True)  # warm-up
    rows = {"bare forward+backward": [], "step, groups prepared on arrival": [], "step, preparing inline": []}
    prepare_times = []
    for _ in range(args.repeats):
        rows["bare forward+backward"].append(bare())
        s, prep = step(True)
        rows["step, groups prepared on arrival"].append(s)
        prepare_times.append(prep)
        rows["step, preparing inline"].append(step(False)[0])
    base = statistics.median(rows["bare forward+backward"])
    print(f"learner step vs bare forward+backward: {args.rollouts} rollouts, prompt {args.prompt_len} + "
          f"completion {args.completion_len} tokens, micro-batch {args.micro_batch}, {args.device}, "
          f"median of {args.repeats}")
    print(f"{'':36} {'seconds':>9} {'bare / this':>12}")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"{name:36} {median:9.3f} {base / median:12.2f}")
    print(f"{'(prepare while the batch fills)':36} {statistics.median(prepare_times):9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
