#!/usr/bin/env bash
# Sourced by the training scripts: checks CONFIG / PRETRAINED and builds TRAIN_ARGS for train.py.
# Expects CONFIG and PRETRAINED to be set (PRETRAINED may be empty).
if [ ! -f "$CONFIG" ]; then echo "error: config file not found: $CONFIG" >&2; exit 2; fi
if [ -n "$PRETRAINED" ] && [ ! -f "$PRETRAINED" ]; then echo "error: checkpoint not found: $PRETRAINED" >&2; exit 2; fi
TRAIN_ARGS=(--config_path "$CONFIG")
if [ -n "$PRETRAINED" ]; then TRAIN_ARGS+=(--pre_trained "$PRETRAINED"); fi
