#!/usr/bin/env bash
# The GPU budget of the evidence grid in one device call (benchmarks/README.md, "The evidence grid").
#
# Prepare here (once per session that has a device):  python benchmarks/gpu_bundle.py
#   -> .devbundle/ (MiniLM as float16 safetensors, the WebNLP files, the peft wheel: under the 64 MiB carry limit)
# Then, as ONE device call (`run` tool, carry [".devbundle"], timeout_s 600):
#   bash benchmarks/gpu_grid.sh
# Cells already in benchmarks/results/grid_gpu/ are skipped; LANES processes share the GPU; no cell starts after
# START_BEFORE seconds, so every started cell can end inside the call. Results come back in $OUT/grid_gpu/: copy
# them into benchmarks/results/grid_gpu/ and commit. Each later device session continues the grid.
set -uo pipefail
cd "$(dirname "$0")/.."
LANES=${LANES:-8}
START_BEFORE=${START_BEFORE:-330}
OUT=${OUT:-/tmp/gpu_grid_out}
mkdir -p "$OUT/grid_gpu" "$OUT/logs"
cp benchmarks/results/grid_gpu/*.json "$OUT/grid_gpu/" 2>/dev/null
rm -f "$OUT/grid_gpu/summary.json"
python -c "import peft" 2>/dev/null || python -m pip install --no-deps --no-index .devbundle/wheels/*.whl >"$OUT/logs/pip.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv >"$OUT/logs/gpu.txt" 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for i in $(seq 0 $((LANES - 1))); do
  python benchmarks/grid.py --budget "${BUDGET:-gpu}" --lane "$i/$LANES" --threads 2 --start-before "$START_BEFORE" \
    --model .devbundle/minilm-fp16 --data-root .devbundle/webnlp --results-dir "$OUT/grid_gpu" \
    --runs-dir /tmp/grid_gpu_runs "$@" >"$OUT/logs/lane$i.log" 2>&1 &
done
wait
rm -f "$OUT/grid_gpu/summary.json"
python benchmarks/grid.py --budget "${BUDGET:-gpu}" --report --results-dir "$OUT/grid_gpu" | tee "$OUT/logs/report.md"
