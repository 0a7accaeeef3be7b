"""The injector's reward: the one place it is defined (verifier, assessor and learner import it).

Game reward (DESIGN.md): +1 when the frozen assessor is wrong, -1 when it is right.

* inject mode: the assessor is right when it flags an error AND names the changed sentence.
* paraphrase mode: the assessor is right when it does NOT flag the (safe) note.

Gates come first, so the injector cannot score by breaking the rules:

* the injector's completion does not parse      -> ``format_penalty`` (no game reward)
* the verifier rejects the edit                  -> ``verifier_penalty`` (no game reward)

An assessor output that does not parse counts as "no error found" (the frozen detector missed).
"""

from __future__ import annotations

from dataclasses import dataclass

from medserl.v1 import messages_pb2 as pb

FOOLED = "fooled"  # assessor wrong: injector wins
CAUGHT = "caught"  # assessor right
INVALID = "invalid"  # verifier rejected the edit
UNPARSEABLE = "unparseable"  # injector output did not parse


@dataclass(frozen=True)
class RewardWeights:
    fooled: float = 1.0
    caught: float = -1.0
    verifier_penalty: float = -1.0
    format_penalty: float = -1.0


def assessor_is_right(mode: int, flag: bool, flagged_sentence_id: int, changed_sentence_id: int) -> bool:
    if mode == pb.MODE_INJECT:
        return flag and flagged_sentence_id == changed_sentence_id
    if mode == pb.MODE_PARAPHRASE:
        return not flag
    raise ValueError(f"no game reward for mode {pb.Mode.Name(mode)}")


def gate_reward(*, parsed: bool, verified: bool, weights: RewardWeights = RewardWeights()) -> pb.RewardParts | None:
    """The reward when a gate fails (the assessor is skipped), else None."""
    if not parsed:
        return pb.RewardParts(total=weights.format_penalty, format=weights.format_penalty, outcome=UNPARSEABLE)
    if not verified:
        return pb.RewardParts(total=weights.verifier_penalty, verifier=weights.verifier_penalty, outcome=INVALID)
    return None


def game_reward(
    mode: int, verdict: pb.AssessorVerdict, changed_sentence_id: int, weights: RewardWeights = RewardWeights()
) -> pb.RewardParts:
    """Reward for a verified rollout once the assessor has judged it."""
    flag = verdict.error_flag if verdict.parsed else False
    right = assessor_is_right(mode, flag, verdict.error_sentence_id, changed_sentence_id)
    game = weights.caught if right else weights.fooled
    return pb.RewardParts(total=game, game=game, outcome=CAUGHT if right else FOOLED)
