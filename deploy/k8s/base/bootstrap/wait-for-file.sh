#!/bin/sh
# Block until a file exists: "wait-for-file.sh /checkpoints/sft/.medserl-ready".
set -eu
until [ -f "$1" ]; do
  printf '{"level":"INFO","logger":"medserl.bootstrap","message":"waiting for %s"}\n' "$1"
  sleep "${2:-10}"
done
