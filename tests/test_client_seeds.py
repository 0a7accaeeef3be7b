"""``medserl client submit-seeds --jsonl``: the rl_train split as ``medserl data prepare`` writes it (the
seed Job in deploy/k8s), plain note records, raw MEDEC pairs, mixed; with the bearer token the
injector requires, from a file (never a flag). Against a stand-in Injector that records what it gets."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest

from medec.prepare import PairRecord
from medserl.v1 import injector_pb2, injector_pb2_grpc
from medserl_cli.cli import main
from services.common.fileio import read_jsonl

TOKEN = "seed-token-0123456789abcdef"


class RecordingInjector(injector_pb2_grpc.InjectorServicer):
    def __init__(self):
        self.notes = []
        self.tokens = []

    def SubmitSeeds(self, request, context):
        self.tokens.append(dict(context.invocation_metadata()).get("authorization", ""))
        if self.tokens[-1] != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
        fresh = [n for n in request.notes if n.note_id not in {m.note_id for m in self.notes}]
        self.notes.extend(fresh)
        return injector_pb2.SubmitSeedsResponse(accepted=len(fresh))


@pytest.fixture
def injector():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = RecordingInjector()
    injector_pb2_grpc.add_InjectorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# the medserl-grpc-tokens Secret\noperator:{TOKEN}\nother:another-token-0123456789\n")
    return path


@pytest.fixture(scope="module")
def rl_train(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    assert main(["data", "prepare", "--demo", "--out", str(out)]) == 0
    path = out / "train_val_split" / "rl_train.jsonl"
    assert path.stat().st_size > 0
    return path


def submit(target: str, jsonl, *extra: str) -> int:
    return main(["client", "submit-seeds", "--target", target, "--jsonl", str(jsonl), "--batch", "2", *extra])


def test_the_prepared_rl_train_split_seeds_its_correct_notes(injector, token_file, rl_train, capsys):
    target, servicer = injector
    pairs = [PairRecord.from_dict(d) for _, d in read_jsonl(rl_train)]
    assert pairs and all(p.split == "rl_train" for p in pairs)
    assert submit(target, rl_train, "--token-file", str(token_file)) == 0
    out = capsys.readouterr()
    assert f"{len(pairs)} seed notes accepted" in out.out and TOKEN not in out.out + out.err
    got = {n.note_id: n for n in servicer.notes}
    assert sorted(got) == sorted(p.note_id for p in pairs)
    for p in pairs:  # the correct note (the seed the injector starts from), MEDEC's sentence ids kept
        note = got[p.note_id]
        assert [(s.id, s.text) for s in note.sentences] == list(p.correct_sentences)
        assert note.text == p.correct_note and note.split == "rl_train" and note.source == p.source
        assert dict(p.incorrect_sentences)[p.error_sentence_id] not in note.text
    assert set(servicer.tokens) == {f"Bearer {TOKEN}"}
    # the seed Job's re-run (a retried Job) adds nothing
    assert submit(target, rl_train, "--token-file", str(token_file)) == 0
    assert "0 seed notes accepted" in capsys.readouterr().out and len(servicer.notes) == len(pairs)


def test_plain_notes_raw_pairs_and_prepared_pairs_mix_in_one_file(injector, rl_train, tmp_path, monkeypatch):
    target, servicer = injector
    monkeypatch.setenv("MEDSERL_GRPC_TOKEN", TOKEN)
    prepared = next(d for _, d in read_jsonl(rl_train))
    raw = {"note_id": "raw-1", "incorrect_note": "The patient has a cough. She was given metformin for the cough.",
           "correct_note": "The patient has a cough. She was given dextromethorphan for the cough.",
           "error_type": "pharmacotherapy", "error_sentence": "She was given metformin for the cough.",
           "corrected_sentence": "She was given dextromethorphan for the cough."}
    rows = [{"note_id": "plain-1", "text": "A 40-year-old man has chest pain. An ECG is ordered."},
            prepared, raw, {"id": "numbered-1", "sentences": [[0, "Fever for two days."], [1, "No cough."]]}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert submit(target, path) == 0
    got = {n.note_id: n for n in servicer.notes}
    assert list(got) == ["plain-1", prepared["note_id"], "raw-1", "numbered-1"]
    assert got["plain-1"].text == rows[0]["text"]
    assert [s.text for s in got["raw-1"].sentences] == ["The patient has a cough.",
                                                        "She was given dextromethorphan for the cough."]
    assert [(s.id, s.text) for s in got["numbered-1"].sentences] == [(0, "Fever for two days."), (1, "No cough.")]


def test_bad_lines_and_missing_tokens_are_one_line_errors_that_quote_no_note(injector, token_file, rl_train, tmp_path,
                                                                             capsys):
    target, servicer = injector
    secret_text = "Sentence that must never be echoed."
    broken_pair = {"pair_id": "p1", "note_id": "p1", "correct_note": secret_text, "correct_sentences": "not a list"}
    prepared = next(d for _, d in read_jsonl(rl_train))
    bad_id = {**prepared, "correct_sentences": [[secret_text, secret_text]]}  # int() would quote the note
    cases = ((2, [{"note_id": "a", "text": "ok note."}, broken_pair]), (1, [{"note_id": "b"}]), (1, [bad_id]))
    for i, (n, rows) in enumerate(cases):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert submit(target, path, "--token-file", str(token_file)) == 2
        err = capsys.readouterr().err
        assert f"line {n}" in err and secret_text not in err and len(err.strip().splitlines()) == 1
    assert not servicer.notes, "nothing is sent when a line is bad"
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"note_id": "c", "text": "A note."}) + "\n")
    assert submit(target, good) == 3  # the injector requires a token
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    empty = tmp_path / "empty-tokens"
    empty.write_text("# nothing\n")
    assert submit(target, good, "--token-file", str(empty)) == 2
    assert "holds no token" in capsys.readouterr().err
