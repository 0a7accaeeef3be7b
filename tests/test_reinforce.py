"""REINFORCE++: each step's maths on a small batch with values computed by hand, the learner's
safety nets (whole groups, non-finite numbers, learning-rate schedule), and that an update moves the
policy toward rewarded edits."""

from __future__ import annotations

import math

import pytest
import torch

from medserl.v1 import messages_pb2 as pb
from services.common.bus import MemoryBus
from services.common.topics import DEAD_LETTER, POLICY_UPDATES, ROLLOUTS_SCORED
from tests.rl_fakes import TinyTokenizer, read_all, recording_factory, tiny_policy
from trainer.reinforce import (
    Learner,
    NonFiniteError,
    ReinforcePPConfig,
    clipped_loss,
    collate,
    group_centred,
    importance_weights,
    kl_penalty,
    learning_rate_at,
    normalize,
    returns,
    sequence_logprobs,
    token_rewards,
)
from trainer.service import LearnerLoop, TrainerSettings

# ------------------------------------------------------------------------------------------------
# the maths, by hand: 2 groups x 2 rollouts, 2 or 3 completion tokens each (position 0 is the prompt)
# ------------------------------------------------------------------------------------------------

MASK = torch.tensor([[0.0, 1.0, 1.0, 0.0],    # r0, group a, 2 tokens
                     [0.0, 1.0, 1.0, 1.0],    # r1, group a, 3 tokens
                     [0.0, 1.0, 1.0, 0.0],    # r2, group b, 2 tokens
                     [0.0, 1.0, 1.0, 1.0]])   # r3, group b, 3 tokens
GROUPS = ["a", "a", "b", "b"]
REWARDS = torch.tensor([1.0, 0.0, -1.0, -2.0])
# log pi_old and log pi_ref on the sampled tokens; k1 = log pi_old - log pi_ref
OLD = torch.tensor([[0.0, -1.0, -0.5, 0.0], [0.0, -0.3, -0.7, -0.2], [0.0, -0.6, -0.9, 0.0], [0.0, -0.4, -0.4, -0.4]])
REF = torch.tensor([[0.0, -1.2, -0.5, 0.0], [0.0, -0.3, -0.2, -0.4], [0.0, -0.1, -0.9, 0.0], [0.0, -0.5, -0.5, -0.5]])


def test_group_centring_uses_each_whole_group_and_leaves_excluded_rollouts_out():
    # group means: a = (1 + 0) / 2 = 0.5, b = (-1 - 2) / 2 = -1.5 (a batch-wide mean, -0.5, would differ)
    assert torch.allclose(group_centred(REWARDS, GROUPS), torch.tensor([0.5, -0.5, 0.5, -0.5]))
    # an excluded rollout (the assessor's answer did not parse): out of the mean, and centred to 0
    rewards, groups = torch.tensor([2.0, 0.0, 5.0, 1.0]), ["b", "b", "b", "c"]
    included = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # b: mean of 2 and 0 = 1 -> [1, -1, 0]; c: nothing judged -> 0
    assert torch.allclose(group_centred(rewards, groups, included), torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_collate_masks_the_tokens_of_excluded_rollouts():
    rollouts = [pb.Rollout(rollout_id="x-0", group_id="x", prompt_token_ids=[1, 2], completion_token_ids=[3, 4],
                           behaviour_logprobs=[-0.1, -0.2], reward=pb.RewardParts(total=1.0, outcome="fooled")),
                pb.Rollout(rollout_id="x-1", group_id="x", prompt_token_ids=[1], completion_token_ids=[5, 6, 7],
                           behaviour_logprobs=[-0.3, -0.4, -0.5],
                           reward=pb.RewardParts(total=0.0, outcome="excluded", excluded=True))]
    batch = collate(rollouts, pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4], [1, 5, 6, 7]]
    assert batch.completion_mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]
    assert batch.included.tolist() == [1.0, 0.0] and batch.groups == ["x", "x"]
    assert torch.allclose(batch.behaviour_logprobs[1], torch.tensor([0.0, -0.3, -0.4, -0.5]))


def test_kl_estimators_on_given_logprobs():
    logp, ref = torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([-1.0, -1.0, -1.0])  # log r = [0, 0.5, -1]
    assert torch.allclose(kl_penalty(logp, ref, "k1"), torch.tensor([0.0, 0.5, -1.0]))
    assert torch.allclose(kl_penalty(logp, ref, "k2"), torch.tensor([0.0, 0.125, 0.5]))  # (log r)^2 / 2
    # k3 = exp(-log r) + log r - 1: exp(-0.5) - 0.5 = 0.1065307, e - 2 = 0.7182818
    assert torch.allclose(kl_penalty(logp, ref, "k3"), torch.tensor([0.0, 0.1065307, 0.7182818]))
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_advantages_token_rewards_then_returns_then_global_normalization():
    kl = kl_penalty(OLD, REF, "k1") * MASK
    assert torch.allclose(kl, torch.tensor([[0, 0.2, 0, 0], [0, 0, -0.5, 0.2], [0, -0.5, 0, 0], [0, 0.1, 0.1, 0.1]]),
                          atol=1e-6)
    scalar = group_centred(REWARDS, GROUPS)  # [0.5, -0.5, 0.5, -0.5]
    # r_t = -0.1 * k1_t, plus the centred reward on each completion's last token
    rewards = token_rewards(scalar, kl, MASK, kl_coef=0.1)
    assert torch.allclose(rewards, torch.tensor([[0, -0.02, 0.5, 0], [0, 0, 0.05, -0.52],
                                                 [0, 0.05, 0.5, 0], [0, -0.01, -0.01, -0.51]]), atol=1e-6)
    # G_t = sum of the rewards from t to the end of the completion (gamma 1)
    g = returns(rewards, MASK, gamma=1.0)
    assert torch.allclose(g, torch.tensor([[0, 0.48, 0.5, 0], [0, -0.47, -0.47, -0.52],
                                           [0, 0.55, 0.5, 0], [0, -0.53, -0.52, -0.51]]), atol=1e-6)
    # over the 10 completion tokens: mean -0.99 / 10 = -0.099, variance 2.45849 / 10 = 0.245849
    std = math.sqrt(0.245849)
    expected = (torch.tensor([[0, 0.48, 0.5, 0], [0, -0.47, -0.47, -0.52],
                              [0, 0.55, 0.5, 0], [0, -0.53, -0.52, -0.51]]) + 0.099) / std * MASK
    advantages = normalize(g, MASK)
    assert torch.allclose(advantages, expected, atol=1e-5)
    assert abs(float(advantages[0, 1]) - 1.16774) < 1e-4 and advantages[0, 3] == 0  # padding carries none


def test_returns_with_a_discount_stay_inside_the_completion():
    rewards = torch.tensor([[0.0, 0.1, 0.2, 1.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(returns(rewards, mask, 1.0), torch.tensor([[0.0, 1.3, 1.2, 1.0, 0.0]]))
    assert torch.allclose(returns(rewards, mask, 0.5)[0, 1], torch.tensor(0.1 + 0.5 * (0.2 + 0.5 * 1.0)))


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


def test_tis_and_icepop_corrected_losses_by_hand():
    mask = torch.ones(1, 4)
    adv = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    old = torch.zeros(1, 4)
    behaviour = -torch.log(torch.tensor([[3.0, 0.5, 1.0, 1.5]]))  # pi_old / pi_behaviour = 3, 0.5, 1, 1.5

    tis, stats = importance_weights(old, behaviour, mask, ReinforcePPConfig(off_policy="tis", tis_cap=2.0))
    assert torch.allclose(tis, torch.tensor([[2.0, 0.5, 1.0, 1.5]]))  # truncated at the cap
    assert stats["is_ratio_mean"] == pytest.approx(1.5) and stats["is_ratio_max"] == pytest.approx(3.0)
    assert stats["is_corrected_fraction"] == pytest.approx(0.25)
    ice, stats = importance_weights(old, behaviour, mask, ReinforcePPConfig(off_policy="icepop", icepop_low=0.5,
                                                                            icepop_high=2.0))
    assert torch.allclose(ice, torch.tensor([[0.0, 0.5, 1.0, 1.5]]))  # 3 is outside [0.5, 2]: no gradient
    assert stats["is_corrected_fraction"] == pytest.approx(0.25)
    none, _ = importance_weights(old, behaviour, mask, ReinforcePPConfig(off_policy="none"))
    assert torch.equal(none, mask)

    # on the learner's own policy (ratio 1): loss = -sum(w * A) / 4
    assert float(clipped_loss(old, old, adv, mask, 0.2, tis)[0]) == pytest.approx(-(2 - 0.5 + 2 + 0.75) / 4)
    assert float(clipped_loss(old, old, adv, mask, 0.2, ice)[0]) == pytest.approx(-(0 - 0.5 + 2 + 0.75) / 4)
    assert float(clipped_loss(old, old, adv, mask, 0.2, none)[0]) == pytest.approx(-(1 - 1 + 2 + 0.5) / 4)
    # ratio 1.5 everywhere, clip 0.2: positive advantages get 1.2 A, negative ones 1.5 A, then times w
    moved = old + math.log(1.5)
    loss, clip = clipped_loss(moved, old, adv, mask, 0.2, tis)
    assert float(loss) == pytest.approx(-(2 * 1.2 * 1 + 0.5 * 1.5 * -1 + 1 * 1.2 * 2 + 1.5 * 1.2 * 0.5) / 4)
    assert float(clip) == 1.0


def test_learning_rate_warmup_then_constant_or_cosine():
    cosine = ReinforcePPConfig(lr_schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    # warmup: (step + 1) / 2; then 0.1 + 0.9 * (1 + cos(pi * progress)) / 2 with progress (step - 2) / 4
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 4: 0.55, 6: 0.1, 10: 0.1}
    for step, lr in expected.items():
        assert learning_rate_at(step, 1.0, cosine, total_steps=6) == pytest.approx(lr), step
    constant = ReinforcePPConfig(lr_schedule="constant", warmup_steps=2)
    assert [learning_rate_at(s, 2.0, constant, 6) for s in (0, 1, 2, 9)] == [1.0, 2.0, 2.0, 2.0]
    assert learning_rate_at(3, 1.0, ReinforcePPConfig(lr_schedule="cosine"), total_steps=0) == 1.0  # no horizon


def test_bad_config_is_refused():
    for bad in ({"kl_estimator": "k4"}, {"off_policy": "ppo"}, {"lr_schedule": "step"}, {"baseline": "critic"},
                {"icepop_low": 1.5}, {"tis_cap": 0.5}, {"rollouts_per_update": 0}):
        with pytest.raises(ValueError):
            ReinforcePPConfig(**bad).validate()


# ------------------------------------------------------------------------------------------------
# the learner on a tiny random Qwen3 (real torch)
# ------------------------------------------------------------------------------------------------


def _group(policy, gid: str, completions: list[tuple[list[int], float]], version: int = 0) -> pb.RolloutGroup:
    """One seed note's group: each completion with its reward, behaviour log-probs from ``policy``."""
    prompt = [3, 4, 5, 6]
    out = pb.RolloutGroup(group_id=gid, seed_note_id=gid, mode=pb.MODE_INJECT, policy_version=version)
    for i, (completion, reward) in enumerate(completions):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = sequence_logprobs(policy, ids, torch.ones_like(ids))[0][0, len(prompt):].tolist()
        out.rollouts.append(pb.Rollout(rollout_id=f"{gid}-{i}", group_id=gid, seed_note_id=gid, mode=pb.MODE_INJECT,
                                       policy_version=version, prompt_token_ids=prompt, completion_token_ids=completion,
                                       behaviour_logprobs=logp, reward=pb.RewardParts(total=reward, outcome="fooled")))
    return out


def _learner(**overrides) -> Learner:
    policy, reference = tiny_policy(), tiny_policy()
    reference.load_state_dict(policy.state_dict())
    return Learner(policy, reference, TinyTokenizer(), ReinforcePPConfig(**{"learning_rate": 1e-2, **overrides}))


GOOD, BAD = [10, 11, 12], [20, 21, 22]


def test_updates_raise_the_likelihood_of_rewarded_completions():
    learner = _learner(micro_batch_size=4)

    def margin() -> float:
        group = _group(learner.policy, "m", [(GOOD, 1.0), (BAD, -1.0)])
        batch = collate(group.rollouts, 0)
        with torch.no_grad():
            logp = sequence_logprobs(learner.policy, batch.input_ids, batch.attention_mask)[0] * batch.completion_mask
        return float(logp[0].sum() - logp[1].sum())

    before = margin()
    for _ in range(5):
        groups = [_group(learner.policy, f"g{g}", [(GOOD, 1.0), (BAD, -1.0)]) for g in range(4)]
        stats = learner.step([learner.prepare(g) for g in groups])
        assert stats.rollouts == 8 and stats.groups == 4 and stats.tokens == 24
        assert stats.is_ratio_mean == pytest.approx(1.0, abs=1e-4)  # sampled by the learner's own policy
    assert margin() > before + 1.0, "the rewarded completion must become clearly more likely"


def test_a_group_split_across_micro_batches_is_still_centred_on_the_whole_group():
    """micro_batch_size 1 puts every rollout of a group in its own forward pass; the gradient must be
    the one of the whole batch (advantages are computed on whole groups before the split)."""
    grads = []
    for micro in (1, 4):
        learner = _learner(micro_batch_size=micro)
        group = _group(learner.policy, "g", [(GOOD, 1.0), (BAD, -1.0), ([13, 14], 0.5), ([15], -0.5)])
        stats = learner.step([learner.prepare(group)])
        grads.append(([p.grad.clone() for p in learner.policy.parameters() if p.grad is not None], stats.loss))
    (g1, loss1), (g4, loss4) = grads
    assert loss1 == pytest.approx(loss4, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g4, strict=True))


def test_k1_is_folded_into_the_reward_k2_k3_are_a_loss_term():
    for estimator in ("k1", "k2", "k3"):
        learner = _learner(kl_estimator=estimator, kl_coef=0.5)
        first = learner.step([learner.prepare(_group(learner.policy, "a", [(GOOD, 1.0), (BAD, -1.0)]))])
        assert first.mean_kl == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
        second = learner.step([learner.prepare(_group(learner.policy, "b", [(GOOD, 1.0), (BAD, -1.0)]))])
        assert second.mean_kl != 0.0, "one step moved the policy away from its reference"
        assert (second.kl_loss > 0) == (estimator != "k1")


def test_the_schedule_sets_each_steps_learning_rate():
    learner = _learner(lr_schedule="cosine", warmup_steps=2, total_steps=4)
    rates = [learner.step([learner.prepare(_group(learner.policy, f"s{i}", [(GOOD, 1.0), (BAD, -1.0)]))]).learning_rate
             for i in range(3)]
    assert rates == pytest.approx([5e-3, 1e-2, 1e-2])
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)


def test_a_nan_behaviour_logprob_raises_in_prepare():
    learner = _learner()
    group = _group(learner.policy, "nan", [(GOOD, 1.0), (BAD, -1.0)])
    group.rollouts[1].behaviour_logprobs[2] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        learner.prepare(group)
    assert info.value.group_ids == ["nan"] and "non-finite" in info.value.reason
    group.rollouts[1].behaviour_logprobs[2] = -1.0
    group.rollouts[0].reward.total = float("inf")
    with pytest.raises(NonFiniteError, match="non-finite reward"):
        learner.prepare(group)


def test_a_non_finite_loss_skips_the_step_and_names_the_groups():
    learner = _learner(micro_batch_size=2)
    good, poisoned = (_group(learner.policy, gid, [(GOOD, 1.0), (BAD, -1.0)]) for gid in ("ok", "poisoned"))
    prepared = [learner.prepare(good), learner.prepare(poisoned)]
    before = [p.detach().clone() for p in learner.policy.parameters()]
    with torch.no_grad():
        learner.policy.lm_head.weight[BAD[0]] = float("nan")  # a NaN logit at every position: NaN log-probs
    with pytest.raises(NonFiniteError, match="non-finite loss") as info:
        learner.step(prepared)
    assert info.value.group_ids == ["ok"]  # the first micro-batch (group "ok") already hits the NaN
    assert learner.step_count == 0, "no step was counted"
    after = [p.detach() for p in learner.policy.parameters()]
    unchanged = [torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert sum(not u for u in unchanged) == 1, "only the weight poisoned by hand differs: no optimizer step"


def test_a_nan_group_is_quarantined_through_the_learner_loop_and_no_policy_is_published(tmp_path):
    bus = MemoryBus()
    bus.ensure_topics([ROLLOUTS_SCORED], partitions=1)  # arrival order = publish order
    holder: list = []
    settings = TrainerSettings(model="tiny", checkpoint_dir=str(tmp_path / "rl"), lora=False, rollouts_per_update=4,
                               poll_timeout_s=0.01, max_batch=1, accounting_interval_s=0.0, starve_after_s=1e9,
                               metrics_port=-1)
    loop = LearnerLoop(settings, bus, learner_factory=recording_factory(holder))
    policy = holder[0].policy
    nan = _group(policy, "nan", [(GOOD, 1.0), (BAD, -1.0)])
    nan.rollouts[0].behaviour_logprobs[1] = float("nan")
    producer = bus.producer()
    for g in (nan, _group(policy, "ok1", [(GOOD, 1.0), (BAD, -1.0)])):
        producer.publish(ROLLOUTS_SCORED, g.SerializeToString(), key=g.group_id)
    consumer = bus.consumer([ROLLOUTS_SCORED, DEAD_LETTER], loop.group_id)
    for _ in range(4):  # nan (quarantined), ok1 (buffered: 2 of 4 rollouts), then idle polls
        loop.poll_once(consumer)

    letters = [d for d in read_all(bus, DEAD_LETTER, "dl", pb.DeadLetter) if d.service == "trainer"]
    assert [d.key for d in letters] == [b"nan"]
    assert "non-finite" in letters[0].reason and letters[0].error_class == "NonFinite"
    assert letters[0].payload == b"", "no copy of the group (its notes) on the dead-letter topic by default"
    quarantined = pb.RolloutGroup.FromString(
        bus.read_at(ROLLOUTS_SCORED, letters[0].source_partition, letters[0].source_offset).value)
    assert quarantined.group_id == "nan" and math.isnan(quarantined.rollouts[0].behaviour_logprobs[1])
    updates = read_all(bus, POLICY_UPDATES, "u1", pb.PolicyUpdate)
    assert updates and all(u.version == 0 and not u.checkpoint_uri for u in updates), "no new policy"
    assert updates[-1].groups_consumed == 1 and loop.fates == {"quarantined": 1}
    assert loop.version == 0 and holder[0].steps == []

    # the loop goes on: the next group fills the batch, and v1 never saw the quarantined group
    ok2 = _group(policy, "ok2", [(GOOD, 1.0), (BAD, -1.0)])
    producer.publish(ROLLOUTS_SCORED, ok2.SerializeToString(), key="ok2")
    for _ in range(2):
        loop.poll_once(consumer)
    (v1,) = [u for u in read_all(bus, POLICY_UPDATES, "u2", pb.PolicyUpdate) if u.version == 1]
    assert list(v1.step_group_ids) == ["ok1", "ok2"] and v1.groups_consumed == 3 and v1.rollouts_consumed == 6
    assert all(math.isfinite(float(p.detach().sum())) for p in policy.parameters())
