#!/bin/sh
# The medserl-seed Job: once the splits exist and the injector answers its health check, submit the
# RL pool (the rl_train split: the prepared pair records, each seeds its correct note) as seed notes.
# submit-seeds is idempotent: a re-run adds nothing. The injector requires a bearer token: the first
# line of the mounted medserl-grpc-tokens Secret.
set -eu

DATA="${MEDSERL_DATA_ROOT:-/data}"
TARGET="${MEDSERL_INJECTOR_TARGET:-injector:50051}"
SEEDS="${MEDSERL_SEEDS_JSONL:-$DATA/processed/train_val_split/rl_train.jsonl}"
TOKENS="${MEDSERL_GRPC_TOKEN_FILE:-/etc/medserl-grpc/tokens}"

sh "$(dirname "$0")/wait-for-file.sh" "$DATA/processed/.done"
python "$(dirname "$0")/wait_grpc.py" "$TARGET" medserl.v1.Injector
medserl client submit-seeds --target "$TARGET" --jsonl "$SEEDS" --token-file "$TOKENS"
