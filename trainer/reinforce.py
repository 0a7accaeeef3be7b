"""REINFORCE++ for the injector, on rollouts streamed from the assessor.

Hu et al., "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
(2025). Read top to bottom; each step is one function:

1. ``collate``            rollouts -> padded token tensors (prompt + completion), completion mask
2. ``sequence_logprobs``  log pi(token) for every completion token under a model
3. ``token_rewards``      r_t = -beta * KL_t on every token, plus the scalar reward on the last one.
                          KL_t = log pi_behaviour(t) - log pi_ref(t) (the k1 estimator on the
                          sampled tokens). With ``baseline="group"`` the scalar reward is first
                          centred on the mean of its group (the n rollouts of one seed note):
                          the "REINFORCE++-baseline" variant of the paper.
4. ``returns``            G_t = sum_{s>=t} gamma^(s-t) r_s   (no critic, no GAE)
5. ``normalize``          A = (G - mean) / std over every completion token in the batch
                          (global batch normalization: the paper's key change to REINFORCE)
6. ``clipped_loss``       PPO's clipped surrogate on ratio = pi_theta / pi_behaviour, token mean
7. ``Learner.step``       one update on a batch of rollouts; returns statistics for the dashboard

The behaviour log-probs come from the injector that sampled the rollout (vLLM or transformers),
so rollouts a version or two old are still used correctly (importance ratio + clipping).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from medserl.v1 import messages_pb2 as pb


@dataclass
class ReinforcePPConfig:
    """Defaults follow the REINFORCE++ paper (and OpenRLHF's reference implementation)."""

    learning_rate: float = 5e-7  # actor learning rate in the paper's experiments
    kl_coef: float = 0.01  # beta: token-level KL penalty folded into the reward
    clip_eps: float = 0.2  # PPO-style ratio clipping
    gamma: float = 1.0  # no discount inside a completion
    baseline: str = "group"  # "group": subtract the per-seed-note mean reward; "none": plain REINFORCE++
    rollouts_per_update: int = 64
    micro_batch_size: int = 4
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0


# ------------------------------------------------------------------------------------------
# 1. collate
# ------------------------------------------------------------------------------------------


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] prompt + completion, right padded
    attention_mask: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] 1 on completion tokens (the actions)
    behaviour_logprobs: torch.Tensor  # [B, T] aligned with completion tokens, 0 elsewhere
    rewards: torch.Tensor  # [B] scalar reward per rollout
    groups: list[str]


def collate(rollouts: Sequence[pb.Rollout], pad_token_id: int) -> Batch:
    lengths = [len(r.prompt_token_ids) + len(r.completion_token_ids) for r in rollouts]
    width = max(lengths)
    shape = (len(rollouts), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    completion_mask = torch.zeros(shape, dtype=torch.float32)
    behaviour = torch.zeros(shape, dtype=torch.float32)
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_token_ids), len(r.completion_token_ids)
        if len(r.behaviour_logprobs) != c:
            raise ValueError(
                f"rollout {r.rollout_id}: {len(r.behaviour_logprobs)} log-probs for {c} completion tokens"
            )
        input_ids[i, : p + c] = torch.tensor(list(r.prompt_token_ids) + list(r.completion_token_ids))
        attention_mask[i, : p + c] = 1
        completion_mask[i, p : p + c] = 1
        behaviour[i, p : p + c] = torch.tensor(list(r.behaviour_logprobs))
    rewards = torch.tensor([r.reward.total for r in rollouts], dtype=torch.float32)
    groups = [r.group_id or r.seed_note_id or r.rollout_id for r in rollouts]
    return Batch(input_ids, attention_mask, completion_mask, behaviour, rewards, groups)


# ------------------------------------------------------------------------------------------
# 2. log-probs of the sampled tokens
# ------------------------------------------------------------------------------------------


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log pi(x_t | x_<t) at every position t >= 1 (position 0 gets 0), shape [B, T]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(logp, (1, 0), value=0.0)


# ------------------------------------------------------------------------------------------
# 3-5. rewards, returns, global normalization
# ------------------------------------------------------------------------------------------


def group_centred(rewards: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
    out = rewards.clone()
    for group in set(groups):
        idx = torch.tensor([i for i, g in enumerate(groups) if g == group])
        out[idx] = rewards[idx] - rewards[idx].mean()
    return out


def token_rewards(scalar: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = -beta * KL_t on completion tokens; the scalar reward lands on each completion's last token."""
    rewards = -kl_coef * kl * mask
    last = (mask * torch.arange(mask.shape[1])[None, :]).argmax(dim=1)
    rewards[torch.arange(mask.shape[0]), last] += scalar
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
# 6. loss
# ------------------------------------------------------------------------------------------


def clipped_loss(
    logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, averaged over completion tokens. Returns (loss, clip fraction)."""
    ratio = torch.exp(logp - behaviour_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
    n = mask.sum().clamp(min=1)
    loss = -(torch.min(unclipped, clipped) * mask).sum() / n
    clip_fraction = (((ratio - 1).abs() > clip_eps).float() * mask).sum() / n
    return loss, clip_fraction


# ------------------------------------------------------------------------------------------
# 7. the learner
# ------------------------------------------------------------------------------------------


@dataclass
class StepStats:
    step: int
    rollouts: int
    mean_reward: float
    mean_kl: float
    loss: float
    clip_fraction: float
    grad_norm: float
    tokens: int
    seconds: float


class Learner:
    """Owns the policy being trained, a frozen reference (the SFT policy) and the optimizer."""

    def __init__(self, policy, reference, tokenizer, config: ReinforcePPConfig):
        self.policy = policy
        self.reference = reference.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = config
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.step_count = 0
        self.device = next(policy.parameters()).device

    def step(self, rollouts: Sequence[pb.Rollout]) -> StepStats:
        started = time.perf_counter()
        cfg = self.config
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = collate(rollouts, pad)
        mask = batch.completion_mask

        with torch.no_grad():
            ref_logp = torch.cat(
                [
                    sequence_logprobs(
                        self.reference,
                        batch.input_ids[i : i + cfg.micro_batch_size].to(self.device),
                        batch.attention_mask[i : i + cfg.micro_batch_size].to(self.device),
                    ).cpu()
                    for i in range(0, len(rollouts), cfg.micro_batch_size)
                ]
            )
            kl = (batch.behaviour_logprobs - ref_logp) * mask
            scalar = group_centred(batch.rewards, batch.groups) if cfg.baseline == "group" else batch.rewards
            advantages = normalize(
                returns(token_rewards(scalar, kl, mask, cfg.kl_coef), mask, cfg.gamma), mask
            )

        self.policy.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = mask.sum().clamp(min=1)
        loss_sum, clip_sum = 0.0, 0.0
        for i in range(0, len(rollouts), cfg.micro_batch_size):
            sl = slice(i, i + cfg.micro_batch_size)
            logp = sequence_logprobs(
                self.policy, batch.input_ids[sl].to(self.device), batch.attention_mask[sl].to(self.device)
            )
            micro_mask = mask[sl].to(self.device)
            loss, clip_fraction = clipped_loss(
                logp,
                batch.behaviour_logprobs[sl].to(self.device),
                advantages[sl].to(self.device),
                micro_mask,
                cfg.clip_eps,
            )
            weight = micro_mask.sum() / total_tokens.to(self.device)  # token-mean over the whole batch
            (loss * weight).backward()
            loss_sum += float(loss.detach()) * float(weight)
            clip_sum += float(clip_fraction) * float(weight)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.policy.parameters() if p.requires_grad], cfg.max_grad_norm
        )
        self.optimizer.step()
        self.step_count += 1
        n_kl = mask.sum().clamp(min=1)
        return StepStats(
            step=self.step_count,
            rollouts=len(rollouts),
            mean_reward=float(batch.rewards.mean()),
            mean_kl=float(kl.sum() / n_kl),
            loss=loss_sum,
            clip_fraction=clip_sum,
            grad_norm=float(grad_norm) if math.isfinite(float(grad_norm)) else float("nan"),
            tokens=int(mask.sum()),
            seconds=time.perf_counter() - started,
        )

    def save(self, out_dir: Path) -> tuple[Path, str]:
        """Save the policy (a LoRA adapter when it is a peft model, else full weights); returns (dir, sha256)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        torch.save(self.optimizer.state_dict(), out_dir / "optimizer.pt")  # resume keeps Adam's moments
        digest = hashlib.sha256()
        for path in sorted(out_dir.glob("*.safetensors")):
            digest.update(path.read_bytes())
        return out_dir, digest.hexdigest()
