"""REINFORCE++: the maths of each step, and that an update moves the policy toward rewarded edits."""

from __future__ import annotations

import torch

from medserl.v1 import messages_pb2 as pb
from trainer.reinforce import (
    Learner,
    ReinforcePPConfig,
    clipped_loss,
    collate,
    group_centred,
    normalize,
    returns,
    sequence_logprobs,
    token_rewards,
)


def test_returns_are_reverse_cumulative_sums_inside_the_completion():
    rewards = torch.tensor([[0.0, 0.1, 0.2, 1.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(returns(rewards, mask, 1.0), torch.tensor([[0.0, 1.3, 1.2, 1.0, 0.0]]))
    assert torch.allclose(returns(rewards, mask, 0.5)[0, 1], torch.tensor(0.1 + 0.5 * (0.2 + 0.5 * 1.0)))


def test_scalar_reward_lands_on_the_last_completion_token_and_kl_is_penalized():
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    kl = torch.tensor([[9.0, 0.5, 0.5, 9.0], [9.0, 9.0, 1.0, 1.0]])
    r = token_rewards(torch.tensor([1.0, -1.0]), kl, mask, kl_coef=0.1)
    assert torch.allclose(r, torch.tensor([[0.0, -0.05, 0.95, 0.0], [0.0, 0.0, -0.1, -1.1]]))


def test_group_baseline_and_global_normalization():
    centred = group_centred(torch.tensor([1.0, -1.0, 1.0, 1.0]), ["a", "a", "b", "b"])
    assert torch.allclose(centred, torch.tensor([1.0, -1.0, 0.0, 0.0]))
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    out = normalize(values, mask)
    assert abs(float((out * mask).sum() / mask.sum())) < 1e-6
    assert out[1, 1] == 0  # padding never carries advantage


def test_clipped_loss_is_minus_mean_advantage_on_policy_and_clips_far_ratios():
    mask = torch.ones(1, 4)
    adv = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
    logp = torch.zeros(1, 4)
    loss, clip = clipped_loss(logp, logp, adv, mask, 0.2)
    assert torch.isclose(loss, -adv.mean()) and clip == 0
    loss_far, clip_far = clipped_loss(logp + 1.0, logp, adv, mask, 0.2)  # ratio e ~ 2.7
    assert clip_far == 1.0
    # positive advantages are capped at 1.2x, negative ones keep the larger penalty
    assert abs(float(loss_far) - (-(1.2 * 1.0 + torch.e * -1.0 + 1.2 * 2.0) / 4)) < 1e-5


class _Tok:
    pad_token_id = 0


def _tiny_policy(seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
    return Qwen3ForCausalLM(config)


def _rollouts(policy, good: list[int], bad: list[int], groups: int) -> list[pb.Rollout]:
    """Each group (one seed note) has one rewarded and one penalized completion."""
    out = []
    prompt = [3, 4, 5, 6]
    for g in range(groups):
        for completion, reward in ((good, 1.0), (bad, -1.0)):
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logp = sequence_logprobs(policy, ids, torch.ones_like(ids))[0, len(prompt):].tolist()
            out.append(pb.Rollout(rollout_id=f"{g}-{reward}", group_id=f"g{g}", prompt_token_ids=prompt,
                                  completion_token_ids=completion, behaviour_logprobs=logp,
                                  reward=pb.RewardParts(total=reward)))
    return out


def test_updates_raise_the_likelihood_of_rewarded_completions():
    policy, reference = _tiny_policy(), _tiny_policy()
    reference.load_state_dict(policy.state_dict())
    good, bad = [10, 11, 12], [20, 21, 22]
    config = ReinforcePPConfig(learning_rate=1e-2, micro_batch_size=4)
    learner = Learner(policy, reference, _Tok(), config)

    def margin() -> float:
        batch = collate(_rollouts(policy, good, bad, 1), 0)
        with torch.no_grad():
            logp = sequence_logprobs(policy, batch.input_ids, batch.attention_mask) * batch.completion_mask
        return float(logp[0].sum() - logp[1].sum())

    before = margin()
    for _ in range(5):
        stats = learner.step(_rollouts(policy, good, bad, groups=4))
        assert stats.rollouts == 8 and stats.tokens == 24
    assert margin() > before + 1.0, "the rewarded completion must become clearly more likely"
