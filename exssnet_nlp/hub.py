"""Model card and upload to the Hugging Face Hub, for any method's checkpoint."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import BASE_WEIGHTS_NAME, MODEL_CARD_NAME, SHARED_WEIGHTS_NAME, is_local_dir, save_model
from .references import portable_reference
from .tasks import FINISHED


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _usage(repo_id: str, tasks: list[Any], infers: bool) -> list[str]:
    """A snippet that runs as written once the checkpoint is at `repo_id` (tested with a local directory)."""
    first = tasks[0] if tasks else None
    lines = ["```python", "from exssnet_nlp import load_pretrained", "",
             f'model = load_pretrained("{repo_id}")  # the tokenizer comes with the checkpoint']
    if first is not None:
        lines.append(f'print(model.predict(["an example text"], task="{first.name}"))  # [{{"task", "label", "score"}}]')
        if infers:
            lines.append('print(model.predict(["an example text"]))  # the task is inferred per text')
    lines += ["```", "", "From the command line (texts as arguments, or one per line on stdin):", "", "```bash",
              f'exssnet-nlp predict --checkpoint {repo_id} "an example text"', "```", ""]
    return lines


def model_card(model: Any, results: dict[str, Any] | None = None, repo_id: str | None = None) -> str:
    """The README.md model card: metadata (library, tags, base model), the tasks with their label names, the
    accuracy matrix when known, and a usage snippet for `repo_id`.

    `results` (optional): {"tasks": [...], "accuracy_matrix": [[...]], "bwt": float, "fwt": float,
    "average_accuracy": float}, accuracy_matrix[i][j] = accuracy on task j after learning task i (None: not measured).
    """
    from huggingface_hub import ModelCard, ModelCardData

    reference = portable_reference(getattr(model, "encoder_reference", None) or model.base_model_name_or_path)
    hub_base = reference if reference and not is_local_dir(reference) and not reference.startswith("pkg:") else None
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
    lines += ["", "## Usage", "", *_usage(repo_id or "<repo id>", tasks, bool(model.supports_task_inference))]
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
        # A Hub id or `pkg:MODULE` loads anywhere; a local directory does not.
        include_base = is_local_dir(portable_reference(getattr(model, "encoder_reference", None) or model.base_model_name_or_path))
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="exssnet-push-") as tmp:
        folder = save_model(model, Path(tmp) / "checkpoint", include_base=include_base, extra_state=extra_state)
        (folder / MODEL_CARD_NAME).write_text(model_card(model, results, repo_id), encoding="utf-8")
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            # delete_patterns: a base file or task file of an older upload that this one lacks goes away.
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model",
                              delete_patterns=["task_*.safetensors", BASE_WEIGHTS_NAME, SHARED_WEIGHTS_NAME])
        except Exception as err:  # offline mode, no network, no token, no rights: one message, nothing local lost
            offline = " HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it." if os.environ.get("HF_HUB_OFFLINE") else ""
            first = (str(err).splitlines() or [""])[0]
            raise ValueError(f"could not upload to the Hub repo {repo_id!r} ({type(err).__name__}: {first})."
                             f"{offline} Check the network, your token (`hf auth login`) and the repo id; the model is "
                             "unchanged: save it locally with save_pretrained meanwhile.") from None
    return str(url)


