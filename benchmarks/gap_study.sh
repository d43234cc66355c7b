#!/usr/bin/env bash
# The accuracy-gap study (benchmarks/README.md, "Closing the gap"): one WebNLP run per variant, each changing
# one thing against the base setting, results in benchmarks/results/gap/<variant>.json.
#   bash benchmarks/gap_study.sh                 # every variant (about 10 minutes each on a 2-core CPU)
#   bash benchmarks/gap_study.sh norms reuse05   # some of them
# The base setting: MiniLM, 100 train / 100 test per class, 64 tokens, feed-forward layers masked, density 0.1,
# mask LR 1e-3, weight LR 1e-3, dense LR 5e-5, 2 + 2 epochs, one seed (42).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
. .venv/bin/activate
BASE="--densities 0.1 --train-samples-per-class 100 --evaluations-per-phase 2 --max_length 64 --eval_samples_per_class 100
      --weight_learning_rate 1e-3 --dense_learning_rate 5e-5 --target_modules ffn"
declare -A VARIANTS=(
  [base]="--methods independent,finetune,supsup,exssnet"
  [kaiming]="--methods exssnet,supsup --score_init kaiming_uniform"
  [norms]="--methods exssnet,supsup --task_norms true"
  [reuse05]="--methods exssnet --reuse_score_scale 0.5"
  [allmods]="--methods exssnet --target_modules all"
  [wlr5e5]="--methods exssnet --weight_learning_rate 5e-5"
  [epochs4]="--methods exssnet,supsup --mask_epochs 4 --weight_epochs 4"
  [kaiming_seed43]="--methods exssnet,supsup --score_init kaiming_uniform --seed 43"
)
ORDER=(base kaiming norms reuse05 allmods wlr5e5 epochs4 kaiming_seed43)
for name in "${@:-${ORDER[@]}}"; do
  [ -n "${VARIANTS[$name]+x}" ] || { echo "unknown variant $name; known: ${ORDER[*]}" >&2; exit 2; }
  # shellcheck disable=SC2086  # word splitting of the flag lists is intended
  python benchmarks/accuracy.py $BASE ${VARIANTS[$name]} --device-tag "gap_$name" \
    --output "benchmarks/results/gap/$name.json" --runs-dir "runs/gap/$name"
done
