"""Kafka topic names: the one place they are spelled. See ../shared/DESIGN.md (data flow)."""

from __future__ import annotations

SFT_VERIFIED = "sft.verified"  # SftExample the generator kept, with its passing VerificationReport
SFT_REJECTED = "sft.rejected"  # SftExample the generator dropped, with the failed checks
NOTES_SEED = "notes.seed"  # Note, seed notes for the RL pool
ROLLOUTS_GENERATED = "rollouts.generated"  # RolloutGroup, injector -> verifier
ROLLOUTS_VERIFIED = "rollouts.verified"  # RolloutGroup, every parsed rollout verified, verifier -> assessor
ROLLOUTS_SCORED = "rollouts.scored"  # RolloutGroup, every rollout rewarded, assessor -> learner
POLICY_UPDATES = "policy.updates"  # PolicyUpdate (versions and accounting), learner -> injector
DEAD_LETTER = "deadletter"  # DeadLetter, from every service

ALL_TOPICS = (
    SFT_VERIFIED,
    SFT_REJECTED,
    NOTES_SEED,
    ROLLOUTS_GENERATED,
    ROLLOUTS_VERIFIED,
    ROLLOUTS_SCORED,
    POLICY_UPDATES,
    DEAD_LETTER,
)
