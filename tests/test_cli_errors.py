"""A newcomer's first hour (issue 14): each mistake, made through the real ``medserl`` command in a
child process, exits non-zero with one line that says what is wrong and what to do, and never a
traceback. Also issue 9's "one definition per setting": flags and ``--help`` come from the dataclasses,
and the old name of the model setting still works, with a warning."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medec import mediqa_eval as me
from medec.prepare import demo_csv_path

ROOT = Path(__file__).resolve().parents[1]


def medserl(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m medserl_cli ARGS`` with no MEDSERL_* settings leaking in from the caller."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEDSERL_")}
    clean.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "medserl_cli", *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one error line, after checking the exit code and that no traceback was printed."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# data: a named folder that is wrong is an error, never a silent switch to the demo set


def test_run_with_a_missing_medec_dir_in_the_environment_says_so(tmp_path):
    result = medserl("run", "--out", str(tmp_path / "run"), env={"MEDSERL_MEDEC_DIR": "/nonexistent"})
    line = error_line(result)
    assert "MEDSERL_MEDEC_DIR /nonexistent is not a folder" in line and "unset it to use the demo set" in line
    assert "demo set (" not in result.stdout and not (tmp_path / "run" / "data").exists()


def test_run_with_an_empty_medec_dir_says_so(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = error_line(medserl("run", "--medec-dir", str(empty), "--out", str(tmp_path / "run")))
    assert f"--medec-dir {empty} has no MEDEC CSV" in line and "omit it to use the demo set" in line
    # data prepare refuses the same input, and names the variable when that is where the folder came from
    line = error_line(medserl("data", "prepare", "--out", str(tmp_path / "p"), env={"MEDSERL_MEDEC_DIR": "/nonexistent"}))
    assert "MEDSERL_MEDEC_DIR /nonexistent is not a folder" in line and "--demo" in line


# ---------------------------------------------------------------------------------------------
# eval: a wrong reference or a partial run is an error, not an all-zero table


@pytest.fixture
def demo_run(tmp_path):
    """(reference CSV, run file covering every text, run file covering 5 texts)."""
    reference = demo_csv_path()
    rows = me.load_reference(reference)

    def write(name: str, subset) -> Path:
        path = tmp_path / name
        path.write_text("".join(me.format_run_line(r.text_id, bool(r.error_flag), r.error_sentence_id,
                                                   None if r.corrected_sentence == "NA" else r.corrected_sentence)
                                + "\n" for r in subset))
        return path

    return reference, write("full.txt", rows), write("part.txt", rows[:5]), len(rows)


def test_eval_against_the_wrong_reference_fails(demo_run, tmp_path):
    reference, _, _, _ = demo_run
    other = tmp_path / "other-run.txt"
    other.write_text("ms-val-0 1 3 The patient has pneumonia.\nms-val-1 0 -1 NA\n")
    line = error_line(medserl("eval", "--reference", str(reference), "--run", str(other)))
    assert "no text id of the run" in line and "pass the reference CSV the run was made from" in line


def test_eval_of_a_partial_run_needs_allow_partial(demo_run):
    reference, full, part, total = demo_run
    line = error_line(medserl("eval", "--reference", str(reference), "--run", str(part)))
    assert f"the run covers 5 of the reference's {total} texts" in line and "--allow-partial" in line
    partial = medserl("eval", "--reference", str(reference), "--run", str(part), "--allow-partial", "--json")
    assert partial.returncode == 0 and "Traceback" not in partial.stderr
    assert "scoring the 5 of" in partial.stderr
    import json

    assert json.loads(partial.stdout)["error_flag_accuracy"] == 1.0  # the covered texts only
    complete = medserl("eval", "--reference", str(reference), "--run", str(full))
    assert complete.returncode == 0 and complete.stderr == ""


def test_eval_into_a_closed_pipe_stops_quietly(demo_run):
    """``medserl eval ... | head``: the reader goes away; no BrokenPipeError traceback."""
    reference, full, _, _ = demo_run
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSERL_")}
    proc = subprocess.Popen([sys.executable, "-m", "medserl_cli", "eval", "--reference", str(reference), "--run",
                             str(full), "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child has written anything
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr


# ---------------------------------------------------------------------------------------------
# train: the model, the phase


def test_train_with_a_mistyped_model_folder_says_no_such_folder(tmp_path):
    (tmp_path / "models" / "sft").mkdir(parents=True)
    result = medserl("train", "--model", str(tmp_path / "models" / "sftt"), "--train-data", str(tmp_path / "x.jsonl"))
    line = error_line(result)
    assert "no such folder" in line and f"did you mean '{tmp_path / 'models' / 'sft'}'" in line
    assert "Repo id" not in result.stderr


def test_train_with_a_hub_name_offline_fails_fast(tmp_path):
    args = ("train", "--model", "nobody/no-such-model", "--train-data", str(tmp_path / "x.jsonl"))
    hf_home = {"HF_HOME": str(tmp_path / "hf")}  # an empty cache
    started = time.monotonic()
    line = error_line(medserl(*args, env={**hf_home, "HF_HUB_OFFLINE": "1"}))
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in line and "local model folder" in line
    # no offline flag, but no network either: the hub endpoint refuses the connection
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDSERL_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))}
    result = subprocess.run([sys.executable, "-m", "medserl_cli", *args], cwd=ROOT, capture_output=True, text=True,
                            env={**env, **hf_home, "HF_ENDPOINT": f"http://127.0.0.1:{port}"}, timeout=60)
    line = error_line(result)
    assert f"the hub (127.0.0.1:{port}) cannot be reached" in line and "local model folder" in line
    assert time.monotonic() - started < 30  # both, interpreter start included: no retry loop


def test_train_phase_rl_is_there_or_points_to_the_command_that_runs_rl():
    if importlib.util.find_spec("medserl_cli.commands.selfplay") is not None:
        result = medserl("train", "--phase", "rl", "--help")
        assert result.returncode == 0 and "usage: medserl train --phase rl" in result.stdout, result.stderr
        assert "Traceback" not in result.stderr
    else:
        line = error_line(medserl("train", "--phase", "rl"))
        assert "medserl serve trainer" in line and "medserl run" in line
    assert "did you mean 'rl'" in error_line(medserl("train", "--phase", "rll"))


# ---------------------------------------------------------------------------------------------
# generate-sft: the README's line with $OPENAI_API_KEY unset


def test_generate_sft_with_an_empty_api_key_flag_says_set_the_variable(tmp_path):
    result = medserl("generate-sft", "--input-jsonl", str(tmp_path / "pairs.jsonl"), "--output-dir", str(tmp_path / "o"),
                     "--num-pairs", "3", "--openai-api-key", env={"OPENAI_API_KEY": ""})
    line = error_line(result)
    assert "--openai-api-key was given no value" in line and "export OPENAI_API_KEY" in line
    assert "expected one argument" not in result.stderr


# ---------------------------------------------------------------------------------------------
# "did you mean" for commands, flags and settings


def test_near_misses_get_a_suggestion():
    assert "did you mean 'train'" in error_line(medserl("trian"))
    assert "did you mean 'trainer'" in error_line(medserl("serve", "trainr"))
    assert "did you mean --learning-rate" in error_line(medserl("train", "--lerning-rate", "1e-4"))
    line = error_line(medserl("serve", "assessor", "--set", "modle=x"))
    assert "unknown setting 'modle' (did you mean 'model'?)" in line
    assert "did you mean --model" in error_line(medserl("serve", "assessor", "--modle", "x"))


# ---------------------------------------------------------------------------------------------
# make run: our stages and progress, not other libraries' noise


@pytest.mark.slow
def test_run_shows_our_stages_without_third_party_noise(tmp_path):
    result = medserl("run", "--out", str(tmp_path / "run"), "--sft-pairs", "4", "--sft-epochs", "1",
                     "--rl-seed-notes", "2", "--rl-updates", "1", "--rl-rollouts-per-update", "4",
                     "--rl-group-size", "2", "--eval-notes", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    for name in ("data prepare", "SFT set", "tiny model", "SFT", "RL self-play", "MEDIQA-CORR evaluation"):
        assert any(name in line for line in stages), (name, stages)
    assert "demo set" in result.stdout
    assert "{'loss'" not in result.stdout and "{'train_runtime'" not in result.stdout  # the Trainer's dicts
    for noise in ("Loading weights", "Writing model shards", "Tokenizing train dataset", "Warning", "Traceback"):
        assert noise not in result.stderr, noise
    assert "RL policy versions" in result.stderr and "training steps" in result.stderr  # progress stays
    assert "[A" not in result.stderr  # no nested evaluation bars
    assert "--verbose" in medserl("run", "--help").stdout


# ---------------------------------------------------------------------------------------------
# issue 9: flags and --help from the dataclasses; the model setting is `model` everywhere


def test_serve_help_lists_every_setting_with_its_default():
    from medserl_cli.commands.serve import service_parser
    from medserl_cli.registry import SERVICES, load_service_class
    from services.common.settings import field_help

    for name in SERVICES:
        cls = load_service_class(name).settings_cls
        text = " ".join(service_parser(name, cls).format_help().split())  # unwrap argparse's lines
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in text, (name, f.name)
        assert text.count("default:") >= len(dataclasses.fields(cls)), name
        assert "consumer group; defaults to medserl-<service> (default: '')" in text
        for meaning in field_help(cls).values():
            assert " ".join(meaning.split()) in text, (name, meaning)
    result = medserl("serve", "verifier", "--help")
    assert result.returncode == 0 and "--topic-suffix" in result.stdout and "(default: 50052)" in " ".join(
        result.stdout.split()
    )


def test_every_train_flag_is_a_field_of_the_sft_recipe_and_old_names_still_work():
    from medserl_cli.cli import build_parser
    from medserl_cli.commands.train import config_from_args
    from trainer.sft import SFTRunConfig

    old_flags = ["--model-name", "m", "--train-data", "d.jsonl", "--save-path", "out", "--num-epochs", "2",
                 "--batch-size", "3", "--learning-rate", "1e-4", "--role", "assessor",
                 "--gradient-accumulation-steps", "2", "--lora", "--lora-r", "8", "--lora-alpha", "16",
                 "--lora-dropout", "0.1", "--lora-target-modules", "q_proj,v_proj", "--max-length", "512",
                 "--eval-fraction", "0.2", "--eval-steps", "5", "--save-steps", "7", "--save-total-limit", "1",
                 "--logging-steps", "2", "--warmup-steps", "0.1", "--gradient-checkpointing", "--seed", "1",
                 "--resume", "--metrics-port", "0", "--device", "cpu", "--max-examples", "9",
                 "--stop-after-steps", "4", "--no-progress", "--estimate-memory"]
    args = build_parser().parse_args(["train", *old_flags])
    config = config_from_args(args)
    assert config == SFTRunConfig(model="m", train_data="d.jsonl", save_path="out", num_epochs=2, batch_size=3,
                                  learning_rate=1e-4, role="assessor", gradient_accumulation_steps=2, lora=True,
                                  lora_r=8, lora_alpha=16, lora_dropout=0.1, lora_target_modules=("q_proj", "v_proj"),
                                  max_length=512, eval_fraction=0.2, eval_steps=5, save_steps=7, save_total_limit=1,
                                  logging_steps=2, warmup_steps=0.1, gradient_checkpointing=True, seed=1, resume=True,
                                  metrics_port=0, device="cpu", max_examples=9, stop_after_steps=4, progress=False)
    assert args.estimate_memory and config_from_args(build_parser().parse_args(["train"])) == SFTRunConfig()
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    for f in dataclasses.fields(SFTRunConfig):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    assert "hub name or local model folder" in help_text and "(default: Qwen/Qwen3-4B)" in help_text


def test_the_old_model_setting_name_is_accepted_with_a_warning(tmp_path, capsys):
    from services.common import settings as s

    @dataclasses.dataclass
    class ModelSettings(s.ServiceSettings):
        model: str = ""  # the model

    s._warned.clear()
    assert s.load_settings(ModelSettings, overrides={"model_name": "a"}, env={}).model == "a"
    assert s.load_settings(ModelSettings, env={"MEDSERL_MODEL_NAME": "b"}).model == "b"
    assert s.load_settings(ModelSettings, env={"MEDSERL_MODEL_NAME": "b", "MEDSERL_MODEL": "c"}).model == "c"
    config = tmp_path / "c.yaml"
    config.write_text("model_name: d\n")
    assert s.load_settings(ModelSettings, config, env={}).model == "d"
    config.write_text("model_name: d\nmodel: e\n")
    assert s.load_settings(ModelSettings, config, env={}).model == "e"  # the new name wins
    err = capsys.readouterr().err
    assert "'model_name' (on the command line) is deprecated" in err and "$MEDSERL_MODEL_NAME is deprecated" in err
    assert f"'model_name' (in {config}) is deprecated" in err
    # through the real command: --model-name and --set model_name= reach `model`, with a warning each
    result = medserl("serve", "assessor", "--model-name", "/no/such/model", "--grpc-port", "0", "--metrics-port", "-1")
    assert "--model-name is deprecated and will be removed: use --model" in result.stderr
    assert "model not found: /no/such/model" in error_line(result)
    result = medserl("serve", "assessor", "--set", "model_name=/no/such/model", "--grpc-port", "0")
    assert "'model_name' (on the command line) is deprecated" in result.stderr
    assert "model not found: /no/such/model" in error_line(result)
