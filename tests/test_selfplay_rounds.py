"""Self-play rounds: the edits that fooled the assessor become its next SFT data, a fresh assessor is
trained and frozen, and play goes on from the learner's newest version."""

from __future__ import annotations

import json

from medec.prepare import read_medec_csv
from medserl.v1 import messages_pb2 as pb
from medserl_cli.selfplay import RoundsConfig, SelfPlayConfig, assessor_records, run_rounds
from services.common import formats
from trainer.medec_sft import medec_sft_records

VALIDATION = "MEDEC-MS-ValidationSet-with-GroundTruth-and-ErrorType.csv"


def _seed_notes(medec_path, limit: int) -> list[pb.Note]:
    notes = [n for n in read_medec_csv(medec_path / VALIDATION)[0] if not n.error_flag and len(n.text) < 500]
    return [pb.Note(note_id=n.note_id, text=n.text, sentences=[pb.Sentence(id=int(i), text=s) for i, s in n.sentences])
            for n in notes[:limit]]


def test_fooling_edits_become_balanced_assessor_records(medec_path):
    note = _seed_notes(medec_path, 1)[0]
    seed = [[s.id, s.text] for s in note.sentences]
    edited = [list(s) for s in seed]
    edited[1][1] = edited[1][1].replace(".", ", treated with amoxicillin.", 1)
    inject = {"group": "g1", "seed_note_id": note.note_id, "mode": "MODE_INJECT", "seed": seed, "edited": edited,
              "changed_sentence_id": 1, "error_type": "pharmacotherapy"}
    paraphrase = {**inject, "group": "g2", "mode": "MODE_PARAPHRASE", "error_type": ""}
    records = assessor_records([inject, paraphrase])
    assert [r["kind"] for r in records] == ["INCORRECT", "CORRECT", "CORRECT"]
    wrong, twin, safe = records
    answer = formats.parse_assessor_output(wrong["messages"][-1]["content"], num_sentences=len(seed))
    assert answer.error_flag and answer.sentence_id == 1 and answer.corrected_sentence == seed[1][1]
    assert wrong["note_sentences"] == edited and twin["note_sentences"] == seed
    assert not formats.parse_assessor_output(safe["messages"][-1]["content"]).error_flag


def test_two_rounds_train_a_new_frozen_assessor_and_resume_the_learner(medec_path, tiny_model_dir, tmp_path):
    data = tmp_path / "assessor_sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in medec_sft_records(medec_path / VALIDATION, max_records=16,
                                                                                max_sentences=12)))
    config = SelfPlayConfig(policy=str(tiny_model_dir), checkpoint_dir=str(tmp_path / "rl"), versions=1,
                            rollouts_per_update=8, max_new_tokens=16, progress=False, starve_after_s=5, timeout_s=600)
    rounds = RoundsConfig(rounds=2, assessor_base=str(tiny_model_dir), assessor_data=str(data), tiny=True,
                          sft_epochs=1.0, eval_reference=str(medec_path / VALIDATION), eval_limit=4)
    outcome = run_rounds(config, rounds, _seed_notes(medec_path, 8), tmp_path / "out")
    first, second = outcome["rounds"]
    assert first["versions"] == [1] and second["versions"] == [2]  # round two resumed the learner
    assert first["assessor"] == str(tiny_model_dir) and second["assessor"] != first["assessor"]
    assert (tmp_path / "out" / "round-1" / "assessor" / "config.json").exists()
    for entry in (first, second):
        assert 0.0 <= entry["assessor_metrics"]["error_flag_accuracy"] <= 1.0
