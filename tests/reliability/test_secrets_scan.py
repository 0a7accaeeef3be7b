"""What a full run leaves behind holds no secret, and note text only where it belongs (issue 12).

The run is ``smoke_run`` (tests/conftest.py): the embedded pipeline on the demo set with a fake
OpenAI key and a fake gRPC token in the environment, its logs captured at DEBUG in the services' JSON
format (every extra field), its stdout and stderr, and the Prometheus exposition afterwards. Every byte
of every file is scanned: the key and the token appear nowhere; sentences of the input notes appear in
no log, no printed line, no metric, no report and no summary, only in data files, which are 0600.
Then the ``--openai-api-key`` flag: a key on the command line warns (``ps`` shows it), a key file works.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medec.prepare import demo_csv_path, read_medec_csv
from services.common.fileio import make_private, open_private, write_atomic

# files a run writes that are meant to hold notes (data sets, the ledger of model answers, run files)
NOTE_FILES = ("data/pairs.jsonl", "data/notes.jsonl", "data/train_val_split/sft_train.jsonl",
              "data/train_val_split/rl_train.jsonl", "data/train_val_split/eval.jsonl",
              "sft_data/sft_correct.jsonl", "sft_data/sft_incorrect.jsonl", "sft_data/sft_combined_safe.jsonl",
              "sft_data/rejected.jsonl", "sft_data/ledger.sqlite", "eval/assessor-run.txt", "rl_fooled.jsonl")
DATA_SUFFIXES = (".jsonl", ".sqlite", ".sqlite-wal", ".sqlite-shm", ".txt")


def input_sentences(min_chars: int = 20) -> set[str]:
    """Sentences of the notes the run read (the demo set): what must not leak."""
    notes, _ = read_medec_csv(demo_csv_path())
    found = {s.strip() for n in notes for _, s in n.sentences if len(s.strip()) >= min_chars}
    found |= {s.strip() for n in notes for s in (n.corrected_sentence or "", n.error_sentence or "")
              if len(s.strip()) >= min_chars}
    assert len(found) > 30
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_no_file_log_metric_or_printed_line_of_a_run_holds_the_key_and_notes_only_sit_in_0600_data_files(smoke_run):
    sentences = input_sentences()
    secrets = [s.encode() for s in smoke_run.secrets]
    outputs = sorted(p for p in smoke_run.out.rglob("*") if p.is_file())
    assert len(outputs) > 30, "the run wrote its files"
    with_notes = []
    for path in [*outputs, smoke_run.log_file, smoke_run.printed, smoke_run.metrics]:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{path}: holds a secret from the environment"
        text = data.decode("utf-8", "ignore")
        if any(s in text for s in sentences):
            with_notes.append(path)
    assert smoke_run.out / "data" / "notes.jsonl" in with_notes, "the scan recognises note text where it is"
    logs = [smoke_run.log_file, smoke_run.printed, smoke_run.metrics]
    assert smoke_run.log_file.stat().st_size > 1000, "the run logged (the scan saw something)"
    assert not [p for p in with_notes if p in logs], "note text in the logs, the terminal or the metrics"
    stray = [str(p.relative_to(smoke_run.out)) for p in with_notes if p not in logs and not p.name.endswith(DATA_SUFFIXES)]
    assert not stray, f"note text outside data files (reports, summaries, state): {stray}"
    loose = [f"{p.relative_to(smoke_run.out)} {oct(mode(p))}" for p in with_notes if mode(p) & 0o077]
    assert not loose, f"files with notes readable by others: {loose}"
    for name in NOTE_FILES:  # every data file a run writes is private, whether this run filled it or not
        path = smoke_run.out / name
        assert path.is_file(), name
        assert mode(path) == 0o600, f"{name}: {oct(mode(path))}"
    assert (smoke_run.out / "report.md").is_file() and mode(smoke_run.out / "report.md") & 0o044, \
        "reports stay readable (they hold no notes)"
    rl = smoke_run.results["rl"]
    assert "fooled" not in rl and rl["fooled_file"].endswith("rl_fooled.jsonl"), "fooled edits are kept out of summaries"


# --------------------------------------------------------------------------------------------
# private files


def test_private_writes_are_0600_from_the_first_byte_and_replace_an_open_file(tmp_path):
    umask = os.umask(0o022)
    try:
        check_private_writes(tmp_path)
    finally:
        os.umask(umask)


def check_private_writes(tmp_path: Path) -> None:
    public, private = tmp_path / "report.json", tmp_path / "notes.jsonl"
    write_atomic(public, "{}")
    assert mode(public) == 0o644, "without private the umask decides, as before"
    private.write_text("old, world-readable\n")
    os.chmod(private, 0o644)
    (tmp_path / "notes.jsonl.tmp").write_text("a temporary a kill left behind")
    os.chmod(tmp_path / "notes.jsonl.tmp", 0o666)
    write_atomic(private, '{"text": "a note"}\n', private=True)
    assert mode(private) == 0o600 and private.read_text() == '{"text": "a note"}\n'
    appended = tmp_path / "sft_correct.jsonl"
    appended.write_text("an older run's line\n")
    os.chmod(appended, 0o644)
    with open_private(appended, "a") as handle:
        handle.write("a new line\n")
    assert mode(appended) == 0o600 and appended.read_text() == "an older run's line\na new line\n"
    with open_private(tmp_path / "fresh.jsonl") as handle:
        assert mode(tmp_path / "fresh.jsonl") == 0o600, "private before anything is written"
        handle.write("x")
    make_private(tmp_path / "ledger.sqlite")
    assert mode(tmp_path / "ledger.sqlite") == 0o600
    with pytest.raises(ValueError):
        open_private(tmp_path / "x", "r")


def test_the_generator_ledger_and_its_journal_are_private(tmp_path):
    from services.generator.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger._db.execute("CREATE TABLE IF NOT EXISTS probe (x TEXT)")
        ledger._db.execute("INSERT INTO probe VALUES ('a paraphrased note')")
        journal = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.sqlite")]
        assert len(journal) >= 2, "the database and its WAL"
        assert all(mode(p) == 0o600 for p in journal), [(p.name, oct(mode(p))) for p in journal]
    finally:
        ledger.close()


# --------------------------------------------------------------------------------------------
# the API key on the command line


FAKE_KEY = "sk-proj-commandLineKey0123456789abcdef"


def generate_sft(capsys, smoke_run, tmp_path, *flags: str, env_key: str | None = None, monkeypatch=None):
    from medserl_cli.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    if env_key:
        monkeypatch.setenv("OPENAI_API_KEY", env_key)
    pairs = smoke_run.out / "data" / "train_val_split" / "sft_train.jsonl"
    code = main(["generate-sft", "--input-jsonl", str(pairs), "--output-dir", str(tmp_path / "sft"), "--num-pairs", "1",
                 "--dry-run", "--no-progress", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_key_on_the_command_line_works_but_warns_and_is_never_printed(capsys, smoke_run, tmp_path, monkeypatch):
    code, out, err = generate_sft(capsys, smoke_run, tmp_path, "--openai-api-key", FAKE_KEY, monkeypatch=monkeypatch)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "ps" in warning[0] and "OPENAI_API_KEY" in warning[0] \
        and "--openai-api-key-file" in warning[0], err
    assert FAKE_KEY not in out + err


def test_a_key_from_a_file_or_the_environment_does_not_warn(capsys, smoke_run, tmp_path, monkeypatch):
    key_file = tmp_path / "openai.key"
    key_file.write_text(FAKE_KEY + "\n")
    key_file.chmod(0o600)
    for flags, env_key in (((f"--openai-api-key-file={key_file}",), None), ((), FAKE_KEY)):
        code, out, err = generate_sft(capsys, smoke_run, tmp_path, *flags, env_key=env_key, monkeypatch=monkeypatch)
        assert code == 0 and "warning:" not in err, err
        assert FAKE_KEY not in out + err
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    code, _out, err = generate_sft(capsys, smoke_run, tmp_path, f"--openai-api-key-file={empty}", monkeypatch=monkeypatch)
    assert code == 2 and "is empty" in err and str(empty) in err
    code, _out, err = generate_sft(capsys, smoke_run, tmp_path, f"--openai-api-key-file={tmp_path / 'missing'}",
                                   monkeypatch=monkeypatch)
    assert code == 2 and "cannot be read" in err
