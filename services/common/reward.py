"""The injector's reward: the ONE place it is written. Only the assessor calls :func:`score_rollout`
(gates included); the verifier annotates, the learner reads ``rollout.reward``.

Game (DESIGN.md): the injector wins when the frozen assessor is wrong.

* inject mode: the assessor is right when it flags an error AND names the changed sentence.
* paraphrase mode: the assessor is right when it does NOT flag the (safe) note.

A reward that teaches: a ladder, not one -1 for every failure
-------------------------------------------------------------
With one penalty for every failure, a group of four failures of different kinds (garbage, a
multi-sentence edit, a caught error) centres to zero and carries no gradient, so a weak policy
never learns validity before deception. The defaults form a ladder, worst to best::

    unparseable (-2.0)  <  invalid (-1.5)  <  caught (-1.0)  <  fooled (+1.0)

so inside one group a parseable edit beats garbage, a valid edit beats an invalid one, and a win
beats a loss: the per-note baseline turns every rung into an advantage. Early on the policy climbs
the format and validity rungs (most of its gradient); once edits are valid, only the game is left.

Reward hacking guard: an assessor answer that does not parse is never a win. The rollout is
``excluded`` (outcome ``excluded``, reward 0, never trained on, counted on a metric); the rest of
the group still trains, centred on the judged rollouts only.
"""

from __future__ import annotations

from dataclasses import dataclass

from medserl.v1 import messages_pb2 as pb

FOOLED = "fooled"  # assessor wrong: injector wins
CAUGHT = "caught"  # assessor right
INVALID = "invalid"  # verifier rejected the edit
UNPARSEABLE = "unparseable"  # injector output did not parse
EXCLUDED = "excluded"  # the assessor's answer did not parse: no judgement, not trained on
OUTCOMES = (FOOLED, CAUGHT, INVALID, UNPARSEABLE, EXCLUDED)


@dataclass(frozen=True)
class RewardWeights:
    """The ladder (see the module doc). ``flat()`` gives the old single -1 for every failure."""

    fooled: float = 1.0
    caught: float = -1.0
    verifier_penalty: float = -1.5
    format_penalty: float = -2.0

    @classmethod
    def flat(cls) -> RewardWeights:
        return cls(fooled=1.0, caught=-1.0, verifier_penalty=-1.0, format_penalty=-1.0)


def assessor_is_right(mode: int, flag: bool, flagged_sentence_id: int, changed_sentence_id: int) -> bool:
    if mode == pb.MODE_INJECT:
        return flag and flagged_sentence_id == changed_sentence_id
    if mode == pb.MODE_PARAPHRASE:
        return not flag
    raise ValueError(f"no game reward for mode {pb.Mode.Name(mode)}")


def needs_verdict(rollout: pb.Rollout) -> bool:
    """True when the rollout passed both gates, so the assessor must judge it."""
    return not rollout.parse_error and rollout.HasField("verification") and rollout.verification.passed


def score_rollout(rollout: pb.Rollout, verdict: pb.AssessorVerdict | None,
                  weights: RewardWeights = RewardWeights()) -> pb.RewardParts:
    """The reward of one rollout: the gates first, then the game on the assessor's verdict."""
    if rollout.parse_error:
        return pb.RewardParts(total=weights.format_penalty, format=weights.format_penalty, outcome=UNPARSEABLE)
    if not rollout.HasField("verification") or not rollout.verification.passed:
        return pb.RewardParts(total=weights.verifier_penalty, verifier=weights.verifier_penalty, outcome=INVALID)
    if verdict is None or not verdict.parsed:
        return pb.RewardParts(total=0.0, outcome=EXCLUDED, excluded=True)
    right = assessor_is_right(rollout.mode, verdict.error_flag, verdict.error_sentence_id,
                              rollout.changed_sentence_id)
    game = weights.caught if right else weights.fooled
    return pb.RewardParts(total=game, game=game, outcome=CAUGHT if right else FOOLED)
