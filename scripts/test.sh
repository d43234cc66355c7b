#!/usr/bin/env bash
# The test command: sets itself up, then runs ruff and the whole suite offline on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check exssnet_nlp tests scripts benchmarks
python -m pytest -q "$@"
