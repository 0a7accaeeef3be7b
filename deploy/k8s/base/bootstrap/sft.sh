#!/bin/sh
# The trainer's "sft" init step: SFT from /checkpoints/base on the SFT set once both are in place,
# then mark /checkpoints/sft ready. Injector and assessor wait for that marker before their model
# servers start. A preempted run resumes from its last checkpoint (--resume); a finished one is
# skipped. Production recipe: 3 epochs, batch 4, lr 5e-5.
set -eu

DATA="${MEDSERL_DATA_ROOT:-/data}"
CKPT="${MEDSERL_CHECKPOINT_ROOT:-/checkpoints}"
READY="$CKPT/sft/.medserl-ready"
log() { printf '{"level":"INFO","logger":"medserl.bootstrap","message":"%s"}\n' "$*"; }

while [ ! -f "$READY" ]; do
  if [ -f "$CKPT/base/.done" ] && [ -f "$DATA/sft/.done" ]; then
    log "SFT starting"
    medserl train --phase sft --model "$CKPT/base" \
      --train-data "$DATA/sft/sft_combined_safe.jsonl" --save-path "$CKPT/sft" \
      --num-epochs "${MEDSERL_SFT_EPOCHS:-3}" --batch-size "${MEDSERL_SFT_BATCH_SIZE:-4}" \
      --learning-rate "${MEDSERL_SFT_LEARNING_RATE:-5e-5}" --gradient-checkpointing \
      --metrics-port 9101 --resume --no-progress
    touch "$READY"
    log "SFT finished: /checkpoints/sft is ready"
  else
    log "waiting for the base model and the SFT set (the medserl-prepare Job)"
    sleep 30
  fi
done
