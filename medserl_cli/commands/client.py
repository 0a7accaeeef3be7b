"""``medserl client``: talk to running services over gRPC (what any client could do with the stubs).

    medserl client assess --file note.txt                 # the verdict and its MEDEC run-file line
    medserl client assess --jsonl notes.jsonl             # many notes: one run-file line each
    medserl client inject --file note.txt --mode inject --n 4
    medserl client submit-seeds --jsonl rl_train.jsonl    # or --demo / --medec-csv FILE
    medserl client status --target 127.0.0.1:50056

A note file is plain text (split into sentences) or MEDEC's numbered form (``0 First sentence.`` per
line, ids kept). A JSONL line is ``{"note_id": ..., "text": ...}`` (or ``sentences: [[id, text], ...]``)
or a MEDEC pair: a prepared record as ``medserl data prepare`` writes it (``pairs.jsonl``,
``train_val_split/rl_train.jsonl``: ``correct_sentences`` ...) or a raw ``train-pairs/`` line; a pair
stands for its correct note (the seed the injector starts from), under the pair's note id. One file
may mix them. Every call has a deadline. Services that require bearer tokens get the one in
``--token-file`` (``$MEDSERL_GRPC_TOKEN_FILE``; a ``caller:token`` line, as in the services' tokens
file, the first one counts) or ``$MEDSERL_GRPC_TOKEN``; a token is never a flag.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

DEFAULT_TARGETS = {"assessor": "127.0.0.1:50054", "injector": "127.0.0.1:50053", "trainer": "127.0.0.1:50056"}
SERVICES = ("Verifier", "Injector", "Assessor", "Trainer", "Generator")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="gRPC client: assess, inject, submit seeds, status", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="client_command", metavar="<action>")

    def common(q: argparse.ArgumentParser, service: str) -> None:
        q.add_argument("--target", default=DEFAULT_TARGETS.get(service, ""),
                       help=f"HOST:PORT of the {service} (default: %(default)s)")
        q.add_argument("--deadline", type=float, default=60.0, help="seconds per call (default: %(default)s)")
        q.add_argument("--token-file", default=os.environ.get("MEDSERL_GRPC_TOKEN_FILE", ""),
                       help="bearer token for services that require one: a file whose first 'caller:token' (or "
                            "'token') line is used (default: $MEDSERL_GRPC_TOKEN_FILE, else $MEDSERL_GRPC_TOKEN)")

    a = actions.add_parser("assess", help="the frozen assessor's verdict on notes")
    source = a.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="one note (plain or numbered sentences)")
    source.add_argument("--jsonl", help="many notes, one JSON object a line")
    common(a, "assessor")
    a.set_defaults(func=run_assess)

    i = actions.add_parser("inject", help="the injector's edits of a note (nothing is published)")
    i.add_argument("--file", required=True, help="the note (plain or numbered sentences)")
    i.add_argument("--mode", choices=("inject", "paraphrase"), default="inject")
    i.add_argument("--n", type=int, default=0, help="edits to sample (default: the service's group size)")
    common(i, "injector")
    i.set_defaults(func=run_inject)

    s = actions.add_parser("submit-seeds", help="add seed notes to the RL pool (notes.seed)")
    seeds = s.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--jsonl", help="notes or MEDEC pairs (prepared rl_train.jsonl): the correct notes")
    seeds.add_argument("--medec-csv", help="a MEDEC CSV: its correct notes (the corrected twin of each error)")
    seeds.add_argument("--demo", action="store_true", help="the project's demo notes")
    s.add_argument("--limit", type=int, default=0, help="at most this many seeds (0: all)")
    s.add_argument("--batch", type=int, default=64, help="notes per SubmitSeeds call")
    common(s, "injector")
    s.set_defaults(func=run_submit_seeds)

    t = actions.add_parser("status", help="health of every MedSeRL service at a target; the trainer's progress")
    common(t, "trainer")
    t.set_defaults(func=run_status)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# --- notes --------------------------------------------------------------------------------------

def note_from_text(text: str, note_id: str):
    """A Note from a file's text: MEDEC's numbered lines keep their ids; plain text is split."""
    from medec.prepare import parse_medec_sentences
    from medserl.v1 import messages_pb2 as pb
    from services.common.notes import make_note

    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(line.split(" ", 1)[0].isdigit() for line in lines[:3]):
        return make_note(note_id, parse_medec_sentences(text), source="grpc")
    return pb.Note(note_id=note_id, text=text.strip(), source="grpc")


def content_id(text: str) -> str:
    """A note id from the content: the same note submitted twice has the same id."""
    return "note-" + hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


PAIR_KEYS = ("correct_sentences", "incorrect_sentences", "correct_note", "incorrect_note")


def notes_from_jsonl(path: str) -> list:
    """Notes from a JSONL file: note records, prepared MEDEC pair records (``medserl data prepare``) and
    raw MEDEC pair lines, mixed as they come; a pair gives its correct note. Errors name the line."""
    from medec.prepare import MedecFormatError, PairRecord, pair_from_raw
    from medserl.v1 import messages_pb2 as pb
    from medserl_cli.cli import CliError
    from services.common.fileio import JsonlError, read_jsonl
    from services.common.notes import make_note

    out = []
    try:
        rows = list(read_jsonl(path))
    except OSError as exc:
        raise CliError(f"--jsonl {path}: {exc.strerror}") from None
    except JsonlError as exc:
        raise CliError(f"--jsonl {path} line {exc.line}: {exc.reason}") from None
    for n, d in rows:
        if any(key in d for key in PAIR_KEYS):
            try:
                if "correct_sentences" in d or "incorrect_sentences" in d:  # prepared (PairRecord.to_dict)
                    pair = PairRecord.from_dict(d)
                else:  # a raw pair line (train-pairs/): segmented here
                    pair = pair_from_raw(d, Path(path), n)
            except MedecFormatError as exc:
                raise CliError(f"--jsonl {path}: {exc}") from None
            except KeyError as exc:  # a field name: safe to show
                raise CliError(f"--jsonl {path} line {n}: not a MEDEC pair record (no {exc})") from None
            except (TypeError, ValueError):  # the message may quote a value, i.e. note text: never shown
                raise CliError(f"--jsonl {path} line {n}: not a MEDEC pair record (sentences must be "
                               "[[id, text], ...] with integer ids)") from None
            if not pair.correct_sentences:
                raise CliError(f"--jsonl {path} line {n}: the pair has no correct sentences")
            note = make_note(pair.note_id or pair.pair_id, list(pair.correct_sentences), source=pair.source,
                             split=pair.split)
            if pair.correct_note.strip():
                note.text = pair.correct_note
            out.append(note)
            continue
        sentences = d.get("sentences")
        note_id = str(d.get("note_id") or d.get("id") or "")
        if sentences:
            try:
                numbered = [(int(i), str(t)) for i, t in sentences]
            except (TypeError, ValueError):
                raise CliError(f"--jsonl {path} line {n}: 'sentences' must be [[id, text], ...]") from None
            out.append(make_note(note_id or content_id(" ".join(t for _, t in numbered)), numbered, source="grpc"))
        elif isinstance(d.get("text"), str) and d["text"].strip():
            out.append(pb.Note(note_id=note_id or content_id(d["text"]), text=d["text"], source="grpc"))
        else:
            raise CliError(f"--jsonl {path} line {n}: needs 'text' or 'sentences' (a note), or a MEDEC pair")
    return out


def notes_from_medec_csv(path: str | Path) -> list:
    from medec.prepare import MedecFormatError, read_medec_csv
    from medserl_cli.cli import CliError
    from services.common.notes import make_note

    try:
        notes, _ = read_medec_csv(path)
    except (OSError, MedecFormatError) as exc:
        raise CliError(f"{path}: {exc}") from None
    out = []
    for note in notes:
        sentences = [(i, note.corrected_sentence if note.error_flag and i == note.error_sentence_id else s)
                     for i, s in note.sentences]
        out.append(make_note(note.note_id, sentences, source=note.source))
    return out


def _read_note_file(path: str):
    from medserl_cli.cli import CliError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--file {path}: {exc.strerror}") from None
    if not text.strip():
        raise CliError(f"--file {path} is empty")
    return note_from_text(text, Path(path).stem)


# --- calls --------------------------------------------------------------------------------------

def bearer_token(token_file: str = "", env=None) -> str:
    """The client's bearer token: the first ``caller:token`` (or ``token``) line of ``token_file``, else
    ``$MEDSERL_GRPC_TOKEN``; "" for none. Errors name the file, never the token."""
    from medserl_cli.cli import CliError

    env = os.environ if env is None else env
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CliError(f"--token-file {token_file}: {exc.strerror}") from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                name, sep, token = line.partition(":")
                return (token if sep else name).strip()
        raise CliError(f"--token-file {token_file} holds no token")
    return env.get("MEDSERL_GRPC_TOKEN", "").strip()


def _channel(target: str, token_file: str = ""):
    from medserl_cli.cli import CliError
    from services.common.auth import channel
    from services.common.runtime import GRPC_OPTIONS

    if not target:
        raise CliError("--target HOST:PORT is needed")
    return channel(target, token=bearer_token(token_file), options=GRPC_OPTIONS)


def rpc_error(exc, target: str, what: str):
    """A gRPC failure as one line: unreachable, deadline, or the server's own message."""
    import grpc

    from medserl_cli.cli import CliError

    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        detail = exc.details() or ""
        if "connect" in detail.lower() or "unavailable" in detail.lower() or not detail:
            return CliError(f"{what}: nothing answers at {target} (is it up? `medserl status`; "
                            f"or pass --target HOST:PORT)", code=3)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"{what}: no answer from {target} within the deadline (--deadline S)", code=3)
    name = code.name if code is not None else type(exc).__name__
    return CliError(f"{what} at {target}: {name}: {exc.details() if hasattr(exc, 'details') else exc}", code=3)


def run_assess(args: argparse.Namespace) -> int:
    import grpc

    from medec.mediqa_eval import format_run_line
    from medserl.v1 import assessor_pb2, assessor_pb2_grpc

    notes = [_read_note_file(args.file)] if args.file else notes_from_jsonl(args.jsonl)
    with _channel(args.target, args.token_file) as channel:
        stub = assessor_pb2_grpc.AssessorStub(channel)
        try:
            if len(notes) == 1:
                verdicts = [stub.Assess(assessor_pb2.AssessRequest(note=notes[0]), timeout=args.deadline)]
            else:
                requests = iter([assessor_pb2.AssessRequest(note=n) for n in notes])
                verdicts = list(stub.AssessMany(requests, timeout=args.deadline * max(1, len(notes) / 16)))
        except grpc.RpcError as exc:
            raise rpc_error(exc, args.target, "assess") from None
    for note, verdict in zip(notes, verdicts, strict=True):
        if args.file:
            flag = "error" if verdict.error_flag else "no error"
            where = f" in sentence {verdict.error_sentence_id}" if verdict.error_flag else ""
            print(f"{note.note_id}: {flag}{where} (p={verdict.flag_probability:.3f}, "
                  f"{'parsed' if verdict.parsed else 'unparsed: ' + verdict.parse_error})")
            if verdict.error_flag and verdict.corrected_sentence:
                print(f"correction: {verdict.corrected_sentence}")
            print("run-file line:")
        print(format_run_line(note.note_id, verdict.error_flag, verdict.error_sentence_id,
                              verdict.corrected_sentence or None))
    return 0


def run_inject(args: argparse.Namespace) -> int:
    import grpc

    from medserl.v1 import injector_pb2, injector_pb2_grpc
    from medserl.v1 import messages_pb2 as pb

    note = _read_note_file(args.file)
    mode = pb.MODE_INJECT if args.mode == "inject" else pb.MODE_PARAPHRASE
    request = injector_pb2.InjectRequest(note=note, mode=mode)
    if args.n:
        request.sampling.n = args.n
    with _channel(args.target, args.token_file) as channel:
        try:
            reply = injector_pb2_grpc.InjectorStub(channel).Inject(request, timeout=args.deadline)
        except grpc.RpcError as exc:
            raise rpc_error(exc, args.target, "inject") from None
    for rollout in reply.rollouts:
        if rollout.parse_error:
            print(f"{rollout.rollout_id}: unparsed ({rollout.parse_error})")
            continue
        changed = {s.id: s.text for s in rollout.modified_note.sentences}.get(rollout.changed_sentence_id, "")
        kind = f" [{rollout.claimed_error_type}]" if rollout.claimed_error_type else ""
        print(f"{rollout.rollout_id}: sentence {rollout.changed_sentence_id}{kind} -> {changed}")
    return 0


def run_submit_seeds(args: argparse.Namespace) -> int:
    import grpc

    from medserl.v1 import injector_pb2, injector_pb2_grpc
    from medserl_cli.cli import CliError

    if args.demo:
        from medec.prepare import demo_csv_path

        notes = notes_from_medec_csv(demo_csv_path())
    elif args.medec_csv:
        notes = notes_from_medec_csv(args.medec_csv)
    else:
        notes = notes_from_jsonl(args.jsonl)
    unique: dict[str, object] = {}
    for note in notes:  # the same seed twice in one submission is one seed
        unique.setdefault(note.note_id, note)
    notes = list(unique.values())[: args.limit or None]
    if not notes:
        raise CliError("no seed notes to submit")
    accepted = 0
    with _channel(args.target, args.token_file) as channel:
        stub = injector_pb2_grpc.InjectorStub(channel)
        for start in range(0, len(notes), max(1, args.batch)):
            chunk = notes[start:start + max(1, args.batch)]
            try:
                accepted += stub.SubmitSeeds(injector_pb2.SubmitSeedsRequest(notes=chunk), timeout=args.deadline).accepted
            except grpc.RpcError as exc:
                raise rpc_error(exc, args.target, f"submit-seeds (after {accepted} accepted)") from None
    print(f"{accepted} seed notes accepted by {args.target}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from medserl.v1 import trainer_pb2, trainer_pb2_grpc
    from medserl_cli.commands.up import health

    overall = health(args.target, args.deadline)
    if overall == "UNREACHABLE":
        from medserl_cli.cli import CliError

        raise CliError(f"status: nothing answers at {args.target} (is it up? `medserl status`)", code=3)
    with _channel(args.target, args.token_file) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        try:
            reply = next(iter(stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=args.deadline)))
            names = [s.name for s in reply.list_services_response.service]
        except grpc.RpcError as exc:
            raise rpc_error(exc, args.target, "status") from None
        ours = [n for n in names if n.startswith("medserl.v1.")]
        print(f"{args.target}: {overall}")
        for name in ours:
            print(f"  {name}: {health(args.target, args.deadline, name)}")
        if "medserl.v1.Trainer" in ours:
            try:
                status = trainer_pb2_grpc.TrainerStub(channel).GetStatus(trainer_pb2.TrainerStatusRequest(),
                                                                         timeout=args.deadline)
                print(f"  trainer: phase {status.phase}, policy version {status.policy_version}, step {status.step}, "
                      f"rollouts consumed {status.rollouts_consumed}, last loss {status.last_loss:.4f}, "
                      f"mean reward {status.mean_reward:.3f}")
            except grpc.RpcError as exc:
                print(f"  trainer: {exc.code().name}: {exc.details()}")
    return 0 if overall == "SERVING" else 1

