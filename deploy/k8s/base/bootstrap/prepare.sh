#!/bin/sh
# The medserl-prepare Job: MEDEC -> pairs + splits, then the model path in. Every step leaves a marker
# and is skipped when its marker exists, so a retried pod (or a re-created Job) resumes where the
# last one stopped and never pays for the SFT set twice.
#
#   MEDSERL_BOOTSTRAP_MODE  production (default) | tiny (dev: demo notes + the tiny local model)
#   MEDSERL_MEDEC_URLS      optional, space-separated URLs of MEDEC CSVs to download; otherwise the
#                           Job waits for /data/medec/.done (kubectl cp the CSVs in, then touch it)
#   MEDSERL_SFT_CHECKPOINT  optional: a finished SFT checkpoint (hub id) to copy to /checkpoints/sft;
#                           skips the base model, the SFT set and the trainer's SFT step
#   MEDSERL_BASE_MODEL      the model SFT starts from (default Qwen/Qwen3-4B)
#   MEDSERL_SFT_PAIRS       accepted pairs for the SFT set (default 500; each gives 2 examples)
#   MEDSERL_SFT_MAX_COST_USD  hard budget for the SFT set (default 50)
#   OPENAI_API_KEY          from the Secret medserl-openai (production mode refuses to run without it)
set -eu

MODE="${MEDSERL_BOOTSTRAP_MODE:-production}"
DATA="${MEDSERL_DATA_ROOT:-/data}"
CKPT="${MEDSERL_CHECKPOINT_ROOT:-/checkpoints}"
SFT_READY="$CKPT/sft/.medserl-ready"

log() { printf '{"level":"INFO","logger":"medserl.bootstrap","message":"%s"}\n' "$*"; }
fail() { printf '{"level":"ERROR","logger":"medserl.bootstrap","message":"%s"}\n' "$*" >&2; exit 1; }

mkdir -p "$DATA/medec" "$DATA/processed" "$DATA/sft" "$CKPT"

# 1. data: MEDEC CSVs -> pairs.jsonl + seeded splits (the test CSV goes to eval only)
if [ ! -f "$DATA/processed/.done" ]; then
  if [ "$MODE" = tiny ]; then
    medserl data prepare --demo --out "$DATA/processed"
  else
    if [ -n "${MEDSERL_MEDEC_URLS:-}" ] && [ ! -f "$DATA/medec/.done" ]; then
      for url in $MEDSERL_MEDEC_URLS; do
        log "downloading ${url##*/}"
        python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
          "$url" "$DATA/medec/${url##*/}"
      done
      touch "$DATA/medec/.done"
    fi
    while [ ! -f "$DATA/medec/.done" ]; do
      log "waiting for MEDEC: kubectl cp the CSVs into $DATA/medec, then touch $DATA/medec/.done"
      sleep 20
    done
    medserl data prepare --medec-dir "$DATA/medec" --out "$DATA/processed"
  fi
  touch "$DATA/processed/.done"
  log "data prepared"
fi

# 2. the model path in
if [ -f "$SFT_READY" ]; then
  log "SFT checkpoint already in place"
elif [ "$MODE" = tiny ]; then
  medserl model tiny --out "$CKPT/sft"
  touch "$SFT_READY"
  log "tiny model written as the SFT checkpoint"
elif [ -n "${MEDSERL_SFT_CHECKPOINT:-}" ]; then
  hf download "$MEDSERL_SFT_CHECKPOINT" --local-dir "$CKPT/sft"
  touch "$SFT_READY"
  log "SFT checkpoint copied"
else
  if [ ! -f "$CKPT/base/.done" ]; then
    hf download "${MEDSERL_BASE_MODEL:-Qwen/Qwen3-4B}" --local-dir "$CKPT/base"
    touch "$CKPT/base/.done"
    log "base model downloaded"
  fi
  # 3. the SFT set: CORRECT = one verified paraphrase, INCORRECT = MEDEC as-is, exactly 50/50
  if [ ! -f "$DATA/sft/.done" ]; then
    [ -n "${OPENAI_API_KEY:-}" ] || [ "${MEDSERL_ALLOW_OFFLINE_SFT:-0}" = 1 ] \
      || fail "OPENAI_API_KEY is empty: create the Secret medserl-openai (docs/deploy.md)"
    medserl generate-sft --input-jsonl "$DATA/processed/train_val_split/sft_train.jsonl" \
      --output-dir "$DATA/sft" --num-pairs "${MEDSERL_SFT_PAIRS:-500}" --add-reasoning \
      --max-cost-usd "${MEDSERL_SFT_MAX_COST_USD:-50}" --no-progress
    touch "$DATA/sft/.done"
    log "SFT set written; the trainer's sft step trains on it"
  fi
fi
