"""Model card and upload to the Hugging Face Hub, for any method's checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import BASE_WEIGHTS_NAME, MODEL_CARD_NAME, SHARED_WEIGHTS_NAME, is_local_dir, save_model
from .tasks import FINISHED


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def model_card(model: Any, results: dict[str, Any] | None = None) -> str:
    """The README.md model card: metadata (library, tags, base model) and a summary of tasks and results.

    `results` (optional): {"tasks": [...], "accuracy_matrix": [[...]], "bwt": float, "fwt": float,
    "average_accuracy": float}, accuracy_matrix[i][j] = accuracy on task j after learning task i.
    """
    from huggingface_hub import ModelCard, ModelCardData

    reference = model.base_model_name_or_path
    hub_base = reference if reference and not is_local_dir(reference) else None
    tasks = [t for t in model.task_infos if t.state == FINISHED]
    data = ModelCardData(library_name="exssnet-nlp", base_model=hub_base, pipeline_tag="text-classification",
                         tags=["exssnet-nlp", "continual-learning", model.method, model.model_type])
    lines = [
        "# Continual-learning model", "",
        f"A `{model.model_type}` encoder that serves every task below, learned one after another with the "
        f"`{model.method}` method of [exssnet-nlp](https://pypi.org/project/exssnet-nlp/).", "",
        f"- Base model: `{reference or 'built in memory (weights included)'}`",
        f"- Method: `{model.method}`",
        *(f"- `{k}`: {v}" for k, v in model.config.to_dict().items()), "",
        "## Tasks (learning order)", "",
        "| # | Task | Labels | Label names |", "|---|---|---|---|",
    ]
    for i, info in enumerate(tasks):
        names = ", ".join(info.label_names)
        lines.append(f"| {i} | {info.name} | {info.num_labels} | {names} |")
    if results:
        names = list(results.get("tasks") or [t.name for t in tasks])
        matrix = results.get("accuracy_matrix") or []
        lines += ["", "## Results", "", "Accuracy on each task (column) after learning each task (row).", "",
                  "| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for i, row in enumerate(matrix):
            label = names[i] if i < len(names) else str(i)
            cells = [_fmt(row[j]) if j < len(row) else "–" for j in range(len(names))]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", f"- Average accuracy: {_fmt(results.get('average_accuracy'))}",
                  f"- Backward transfer (BWT): {_fmt(results.get('bwt'))}",
                  f"- Forward transfer (FWT): {_fmt(results.get('fwt'))}"]
    lines += ["", "## Usage", "", "```python", "from exssnet_nlp import load_pretrained", "",
              'model = load_pretrained("<repo id>")',
              f'logits = model(**inputs, task="{tasks[-1].name if tasks else "<task>"}").logits', "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def push_to_hub(model: Any, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload exssnet-nlp checkpoint", results: dict[str, Any] | None = None,
                include_base: bool | None = None, extra_state: dict[str, Any] | None = None) -> str:
    """Save `model` with a model card and upload it to `repo_id`; returns the repo URL.

    `include_base=None` stores the base weights when others couldn't load the encoder by name (built in
    memory, or loaded from a local directory).
    """
    from huggingface_hub import HfApi

    if include_base is None:
        include_base = is_local_dir(model.base_model_name_or_path)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="exssnet-push-") as tmp:
        folder = save_model(model, Path(tmp) / "checkpoint", include_base=include_base, extra_state=extra_state)
        (folder / MODEL_CARD_NAME).write_text(model_card(model, results), encoding="utf-8")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # delete_patterns: a base file or task file of an older upload that this one lacks goes away.
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model",
                          delete_patterns=["task_*.safetensors", BASE_WEIGHTS_NAME, SHARED_WEIGHTS_NAME])
    return str(url)


