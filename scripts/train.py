"""Run a continual-learning sequence; works under `accelerate launch` (one CPU to many GPUs).

    accelerate launch --num_processes 2 scripts/train.py --config configs/webnlp_local.yaml
"""

import sys

from exssnet_nlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
