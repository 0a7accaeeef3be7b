"""REINFORCE++ for the injector, on rollout groups streamed from the assessor.

Hu et al., "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
(2025). Read top to bottom; each step is one function:

1. ``collate``             whole groups -> padded token tensors (prompt + completion), completion mask;
                           rollouts the assessor could not judge (``reward.excluded``) are masked out
2. ``sequence_logprobs``   log pi(token) for every completion token under a model (+ its entropy)
3. ``kl_penalty``          the KL estimators on sampled tokens, log r = log pi - log pi_ref:
                           k1 = log r (folded into the reward, the paper's choice and the default),
                           k2 = (log r)^2 / 2 and k3 = exp(-log r) + log r - 1 (Schulman's unbiased,
                           always positive estimator), both as a loss term
4. ``group_centred``       the scalar reward minus the mean of its group (the n rollouts of one seed
                           note): "REINFORCE++-baseline". Only whole groups reach the learner.
5. ``token_rewards``       r_t = -beta * k1_t on every token, plus the scalar reward on the last one
6. ``returns``             G_t = sum_{s>=t} gamma^(s-t) r_s   (no critic, no GAE)
7. ``normalize``           A = (G - mean) / std over every completion token in the batch
                           (global batch normalization: the paper's key change to REINFORCE)
8. ``importance_weights``  the off-policy correction beyond the PPO clip: the sampler (vLLM, an
                           older version) is not the learner's policy, so each token is weighted by
                           w = pi_old / pi_behaviour, truncated at ``tis_cap`` (TIS, Yao et al. 2025)
                           or zeroed outside [low, high] (IcePop masking of extreme ratios)
9. ``clipped_loss``        PPO's clipped surrogate on ratio = pi_theta / pi_old, times w, token mean
10. ``Learner``            ``prepare`` (old and reference log-probs, computed while the batch fills)
                           and ``step`` (one update on whole groups; non-finite numbers never step)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from medserl.v1 import messages_pb2 as pb

KL_ESTIMATORS = ("k1", "k2", "k3")
OFF_POLICY = ("tis", "icepop", "none")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class ReinforcePPConfig:
    """Defaults follow the REINFORCE++ paper (and OpenRLHF's reference implementation)."""

    learning_rate: float = 5e-7  # full weights: the paper's actor learning rate
    lora_learning_rate: float = 1e-5  # LoRA adapters need ~10-20x the full-weight rate to move at all
    lr_schedule: str = "constant"  # constant | cosine (after warmup; cosine decays to min_lr_ratio)
    warmup_steps: int = 0  # linear warmup from 0
    total_steps: int = 0  # cosine horizon (0: the trainer's max_updates)
    min_lr_ratio: float = 0.1
    kl_coef: float = 0.01  # beta
    kl_estimator: str = "k1"  # k1: -beta*KL in the reward (the paper); k2 | k3: beta*KL as a loss term
    clip_eps: float = 0.2  # PPO-style ratio clipping
    off_policy: str = "tis"  # tis | icepop | none: the correction for sampler/learner mismatch
    tis_cap: float = 2.0  # TIS: w = min(pi_old / pi_behaviour, cap)
    icepop_low: float = 0.5  # IcePop: tokens with w outside [low, high] get no gradient
    icepop_high: float = 2.0
    gamma: float = 1.0  # no discount inside a completion
    baseline: str = "group"  # "group": subtract the per-seed-note mean reward; "none": plain REINFORCE++
    rollouts_per_update: int = 64
    micro_batch_size: int = 4
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    max_staleness: int = 4  # groups sampled more than this many versions ago are dropped (counted)
    seed: int = 0

    def validate(self) -> ReinforcePPConfig:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.off_policy not in OFF_POLICY:
            raise ValueError(f"off_policy must be one of {OFF_POLICY}, got {self.off_policy!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.baseline not in ("group", "none"):
            raise ValueError(f"baseline must be group or none, got {self.baseline!r}")
        if self.rollouts_per_update < 1 or self.micro_batch_size < 1:
            raise ValueError("rollouts_per_update and micro_batch_size must be >= 1")
        if not 0 < self.icepop_low < 1 < self.icepop_high or self.tis_cap < 1:
            raise ValueError("need 0 < icepop_low < 1 < icepop_high and tis_cap >= 1")
        return self


class NonFiniteError(ValueError):
    """Non-finite numbers in a rollout or a step: the step is skipped, these groups quarantined."""

    def __init__(self, group_ids: Sequence[str], reason: str):
        super().__init__(reason)
        self.group_ids = list(group_ids)
        self.reason = reason


# ------------------------------------------------------------------------------------------
# 1. collate
# ------------------------------------------------------------------------------------------


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] prompt + completion, right padded
    attention_mask: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] 1 on completion tokens (the actions) of trained rollouts
    behaviour_logprobs: torch.Tensor  # [B, T] aligned with completion tokens, 0 elsewhere
    rewards: torch.Tensor  # [B] scalar reward per rollout
    included: torch.Tensor  # [B] 1 for judged rollouts, 0 for excluded ones
    groups: list[str]


def collate(rollouts: Sequence[pb.Rollout], pad_token_id: int) -> Batch:
    lengths = [len(r.prompt_token_ids) + len(r.completion_token_ids) for r in rollouts]
    shape = (len(rollouts), max(lengths))
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    completion_mask = torch.zeros(shape, dtype=torch.float32)
    behaviour = torch.zeros(shape, dtype=torch.float32)
    included = torch.tensor([0.0 if r.reward.excluded else 1.0 for r in rollouts])
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_token_ids), len(r.completion_token_ids)
        if len(r.behaviour_logprobs) != c:
            raise ValueError(f"rollout {r.rollout_id}: {len(r.behaviour_logprobs)} log-probs for {c} tokens")
        input_ids[i, : p + c] = torch.tensor(list(r.prompt_token_ids) + list(r.completion_token_ids))
        attention_mask[i, : p + c] = 1
        completion_mask[i, p : p + c] = included[i]
        behaviour[i, p : p + c] = torch.tensor(list(r.behaviour_logprobs))
    rewards = torch.tensor([r.reward.total for r in rollouts], dtype=torch.float32)
    groups = [r.group_id or r.rollout_id for r in rollouts]
    return Batch(input_ids, attention_mask, completion_mask, behaviour, rewards, included, groups)


# ------------------------------------------------------------------------------------------
# 2. log-probs (and entropy) of the sampled tokens
# ------------------------------------------------------------------------------------------


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      entropy_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(x_t | x_<t) at every position t >= 1 (position 0 gets 0), shape [B, T]; with
    ``entropy_mask`` also the policy's entropy at the masked positions (summed, for a mean later)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    logp = F.pad(log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1), (1, 0), value=0.0)
    entropy = None
    if entropy_mask is not None:
        positions = entropy_mask[:, 1:].bool()  # the distribution that sampled token t sits at t - 1
        chosen = log_probs[positions]
        entropy = -(chosen.exp() * chosen).sum()
    return logp, entropy


# ------------------------------------------------------------------------------------------
# 3. KL estimators
# ------------------------------------------------------------------------------------------


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate on the sampled tokens."""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}")


# ------------------------------------------------------------------------------------------
# 4-7. rewards, returns, global normalization
# ------------------------------------------------------------------------------------------


def group_centred(rewards: torch.Tensor, groups: Sequence[str], included: torch.Tensor | None = None) -> torch.Tensor:
    """Each reward minus the mean reward of its group's judged rollouts (excluded ones get 0)."""
    included = torch.ones_like(rewards) if included is None else included
    out = torch.zeros_like(rewards)
    for group in set(groups):
        idx = torch.tensor([i for i, g in enumerate(groups) if g == group])
        weights = included[idx]
        if weights.sum() == 0:
            continue
        mean = (rewards[idx] * weights).sum() / weights.sum()
        out[idx] = (rewards[idx] - mean) * weights
    return out


def token_rewards(scalar: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = -beta * KL_t on completion tokens; the scalar reward lands on each completion's last token."""
    rewards = -kl_coef * kl * mask
    last = (mask * torch.arange(mask.shape[1])[None, :]).argmax(dim=1)
    rewards[torch.arange(mask.shape[0]), last] += scalar * (mask.sum(dim=1) > 0)
    return rewards


def returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1}, computed right to left."""
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return out * mask


def normalize(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    n = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / n
    var = (((values - mean) * mask) ** 2).sum() / n
    return (values - mean) / (var.sqrt() + eps) * mask


# ------------------------------------------------------------------------------------------
# 8-9. off-policy correction and loss
# ------------------------------------------------------------------------------------------


def importance_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
                       config: ReinforcePPConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """w = pi_old / pi_behaviour per token, corrected as configured; with ratio statistics."""
    ratio = torch.exp((old_logp - behaviour_logp).clamp(-20, 20)) * mask
    n = mask.sum().clamp(min=1)
    if config.off_policy == "tis":
        weights = ratio.clamp(max=config.tis_cap)
        corrected = ((ratio > config.tis_cap).float() * mask).sum() / n
    elif config.off_policy == "icepop":
        keep = ((ratio >= config.icepop_low) & (ratio <= config.icepop_high)).float() * mask
        weights = ratio * keep
        corrected = (mask - keep).sum() / n
    else:
        weights = mask.clone()
        corrected = torch.tensor(0.0)
    stats = {"is_ratio_mean": float(ratio.sum() / n), "is_ratio_max": float(ratio.max()) if mask.any() else 1.0,
             "is_corrected_fraction": float(corrected)}
    return weights * mask, stats


def clipped_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate times the off-policy weights, averaged over completion tokens.
    Returns (loss, clip fraction)."""
    weights = mask if weights is None else weights
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
    n = mask.sum().clamp(min=1)
    loss = -(torch.min(unclipped, clipped) * weights * mask).sum() / n
    clip_fraction = (((ratio - 1).abs() > clip_eps).float() * mask).sum() / n
    return loss, clip_fraction


def learning_rate_at(step: int, base_lr: float, config: ReinforcePPConfig, total_steps: int) -> float:
    """Linear warmup, then constant or cosine decay to ``min_lr_ratio * base_lr``."""
    if config.warmup_steps and step < config.warmup_steps:
        return base_lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant" or total_steps <= config.warmup_steps:
        return base_lr
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    floor = config.min_lr_ratio * base_lr
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------
# 10. the learner
# ------------------------------------------------------------------------------------------


@dataclass
class PreparedGroup:
    """A group with what the step needs that does not depend on the gradient, computed on arrival."""

    group: pb.RolloutGroup
    batch: Batch
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    entropy_sum: float
    prepared_at_step: int
    seconds: float

    @property
    def size(self) -> int:
        return len(self.group.rollouts)


@dataclass
class StepStats:
    step: int
    rollouts: int
    groups: int
    trained_rollouts: int
    mean_reward: float
    mean_kl: float
    kl_loss: float
    loss: float
    clip_fraction: float
    is_ratio_mean: float
    is_ratio_max: float
    is_corrected_fraction: float
    entropy: float
    grad_norm: float
    learning_rate: float
    tokens: int
    seconds: float
    prepare_seconds: float = 0.0  # spent while the batch filled (not on the step's critical path)
    extra: dict = field(default_factory=dict)


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


class Learner:
    """Owns the policy being trained, a frozen reference (the SFT policy) and the optimizer."""

    def __init__(self, policy, reference, tokenizer, config: ReinforcePPConfig, total_steps: int = 0):
        self.policy = policy
        self.reference = reference.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = config.validate()
        self.is_lora = hasattr(policy, "peft_config")
        self.base_lr = config.lora_learning_rate if self.is_lora else config.learning_rate
        self.total_steps = config.total_steps or total_steps
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.base_lr, weight_decay=config.weight_decay)
        self.step_count = 0
        self.device = next(policy.parameters()).device
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _chunks(self, n: int):
        for i in range(0, n, self.config.micro_batch_size):
            yield slice(i, i + self.config.micro_batch_size)

    @torch.no_grad()
    def prepare(self, group: pb.RolloutGroup) -> PreparedGroup:
        """Old-policy and reference log-probs of a group, as it arrives (raises NonFiniteError)."""
        started = time.perf_counter()
        for r in group.rollouts:
            if not all(math.isfinite(x) for x in r.behaviour_logprobs):
                raise NonFiniteError([group.group_id], f"rollout {r.rollout_id}: non-finite behaviour log-prob")
            if not math.isfinite(r.reward.total):
                raise NonFiniteError([group.group_id], f"rollout {r.rollout_id}: non-finite reward")
        batch = collate(group.rollouts, self.pad)
        was_training = self.policy.training
        self.policy.eval()
        old, ref, entropy = [], [], 0.0
        for sl in self._chunks(len(group.rollouts)):
            ids, att = batch.input_ids[sl].to(self.device), batch.attention_mask[sl].to(self.device)
            logp, ent = sequence_logprobs(self.policy, ids, att, batch.completion_mask[sl].to(self.device))
            old.append(logp.cpu())
            entropy += float(ent)
            ref.append(sequence_logprobs(self.reference, ids, att)[0].cpu())
        self.policy.train(was_training)
        old_logp, ref_logp = torch.cat(old), torch.cat(ref)
        if not (_finite(old_logp) and _finite(ref_logp)):
            raise NonFiniteError([group.group_id], "non-finite log-probs under the learner's policy or reference")
        return PreparedGroup(group, batch, old_logp, ref_logp, entropy, self.step_count,
                             time.perf_counter() - started)

    def step(self, prepared: Sequence[PreparedGroup]) -> StepStats:
        """One REINFORCE++ update on whole groups. Raises NonFiniteError (no update) on NaN/inf."""
        started = time.perf_counter()
        cfg = self.config
        prepared = [p if p.prepared_at_step == self.step_count else self.prepare(p.group) for p in prepared]
        rollouts = [r for p in prepared for r in p.group.rollouts]
        batch = collate(rollouts, self.pad)
        width = batch.input_ids.shape[1]
        old_logp = torch.cat([F.pad(p.old_logp, (0, width - p.old_logp.shape[1])) for p in prepared])
        ref_logp = torch.cat([F.pad(p.ref_logp, (0, width - p.ref_logp.shape[1])) for p in prepared])
        owner = [p.group.group_id for p in prepared for _ in p.group.rollouts]
        mask = batch.completion_mask

        with torch.no_grad():
            kl_reward = kl_penalty(old_logp, ref_logp, "k1") * mask
            scalar = (group_centred(batch.rewards, batch.groups, batch.included) if cfg.baseline == "group"
                      else batch.rewards * batch.included)
            folded_kl = cfg.kl_coef if cfg.kl_estimator == "k1" else 0.0
            advantages = normalize(returns(token_rewards(scalar, kl_reward, mask, folded_kl), mask, cfg.gamma), mask)
            weights, ratio_stats = importance_weights(old_logp, batch.behaviour_logprobs, mask, cfg)

        lr = learning_rate_at(self.step_count, self.base_lr, cfg, self.total_steps)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        self.policy.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = mask.sum().clamp(min=1)
        loss_sum, clip_sum, kl_loss_sum = 0.0, 0.0, 0.0
        for sl in self._chunks(len(rollouts)):
            micro_mask = mask[sl].to(self.device)
            if micro_mask.sum() == 0:
                continue
            logp, _ = sequence_logprobs(self.policy, batch.input_ids[sl].to(self.device),
                                        batch.attention_mask[sl].to(self.device))
            loss, clip_fraction = clipped_loss(logp, old_logp[sl].to(self.device), advantages[sl].to(self.device),
                                               micro_mask, cfg.clip_eps, weights[sl].to(self.device))
            if cfg.kl_estimator != "k1":
                kl = kl_penalty(logp, ref_logp[sl].to(self.device), cfg.kl_estimator)
                kl_term = (kl * micro_mask).sum() / micro_mask.sum().clamp(min=1)
                loss = loss + cfg.kl_coef * kl_term
                kl_loss_sum += float(kl_term.detach()) * float(micro_mask.sum() / total_tokens)
            if not _finite(loss.detach()):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteError(sorted(set(owner[sl])), "non-finite loss")
            weight = micro_mask.sum() / total_tokens.to(self.device)  # token-mean over the whole batch
            (loss * weight).backward()
            loss_sum += float(loss.detach()) * float(weight)
            clip_sum += float(clip_fraction) * float(weight)
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.policy.parameters() if p.requires_grad],
                                                   cfg.max_grad_norm)
        if not math.isfinite(float(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(sorted(set(owner)), "non-finite gradient norm")
        self.optimizer.step()
        self.step_count += 1
        n = mask.sum().clamp(min=1)
        entropy_tokens = sum(float(p.batch.completion_mask.sum()) for p in prepared) or 1.0
        return StepStats(
            step=self.step_count, rollouts=len(rollouts), groups=len(prepared),
            trained_rollouts=int(batch.included.sum()),
            mean_reward=float(batch.rewards[batch.included.bool()].mean()) if batch.included.any() else 0.0,
            mean_kl=float(kl_reward.sum() / n), kl_loss=kl_loss_sum, loss=loss_sum, clip_fraction=clip_sum,
            **ratio_stats, entropy=sum(p.entropy_sum for p in prepared) / entropy_tokens,
            grad_norm=float(grad_norm), learning_rate=lr, tokens=int(mask.sum()),
            seconds=time.perf_counter() - started, prepare_seconds=sum(p.seconds for p in prepared),
        )

    def save(self, out_dir: Path) -> tuple[Path, str]:
        """Save the policy (a LoRA adapter for a peft model, else full weights); returns (dir, sha256)
        with the sha256 the injector checks (``services.inference.checkpoint_sha256``)."""
        from services.inference import checkpoint_sha256

        out_dir.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        torch.save(self.optimizer.state_dict(), out_dir / "optimizer.pt")  # resume keeps Adam's moments
        return out_dir, checkpoint_sha256(out_dir)
