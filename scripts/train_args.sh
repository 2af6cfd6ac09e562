#!/usr/bin/env bash
# Sourced by the training scripts: checks CONFIG / PRETRAINED and builds TRAIN_ARGS for train.py.
# Expects CONFIG and PRETRAINED to be set (PRETRAINED may be empty), relative to the folder the
# user runs the script from; they are made absolute, so the scripts may change folder afterwards.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  usage="Usage: source scripts/train_args.sh   (with CONFIG and PRETRAINED set; sets TRAIN_ARGS)"
  if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then echo "$usage"; exit 0; fi
  echo "$usage" >&2; exit 2
fi
if [ ! -f "$CONFIG" ]; then echo "error: config file not found: $CONFIG" >&2; exit 2; fi
if [ -n "$PRETRAINED" ] && [ ! -f "$PRETRAINED" ]; then echo "error: checkpoint not found: $PRETRAINED" >&2; exit 2; fi
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
if [ -n "$PRETRAINED" ]; then PRETRAINED="$(cd "$(dirname "$PRETRAINED")" && pwd)/$(basename "$PRETRAINED")"; fi
TRAIN_ARGS=(--config_path "$CONFIG")
if [ -n "$PRETRAINED" ]; then TRAIN_ARGS+=(--pre_trained "$PRETRAINED"); fi
