"""Issue 15: the library as users of transformers, datasets and accelerate expect it."""

from __future__ import annotations

import pytest
from conftest import WORDS, make_args, write_task
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from exssnet_nlp.data import load_task
from exssnet_nlp.training import ContinualTrainer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(n: int, seed: int) -> dict[str, list]:
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        texts.append(" ".join(rng.choice(WORDS["sentiment"][label]) for _ in range(6)))
        labels.append(label)
    return {"review": texts, "stars": labels}


def test_a_datasetdict_and_a_dataset_in_the_task_list(tiny_model_dir, tmp_path):
    features = Features({"review": Value("string"), "stars": ClassLabel(names=["bad", "good"])})
    reviews = DatasetDict({"train": Dataset.from_dict(_rows(24, 0), features=features),
                           "test": Dataset.from_dict(_rows(10, 1), features=features)})
    data = load_task({"name": "reviews", "dataset": reviews, "text_column": "review", "label_column": "stars"},
                     validation_samples_per_class=2)
    assert data.label_names == ["bad", "good"] and len(data.test) == 10 and len(data.train) == 20
    # One Dataset: a seeded 80/20 train/test split.
    single = load_task({"name": "one", "dataset": Dataset.from_dict(_rows(30, 2)), "text_column": "review",
                        "label_column": "stars"}, validation_samples_per_class=0)
    assert (len(single.train), len(single.test)) == (24, 6)
    # Through the trainer, beside a file task.
    topic = write_task(tmp_path / "data", "topic", WORDS["topic"], n_train=10, n_test=6)
    args = make_args(tiny_model_dir, tmp_path / "run", "exssnet", mask_epochs=1, weight_epochs=1)
    tasks = [topic, {"name": "reviews", "dataset": reviews, "text_column": "review", "label_column": "stars"}]
    results = ContinualTrainer(build_model(args), args, tasks).train()
    assert results["tasks"] == ["topic", "reviews"] and results["accuracy_matrix"][1][1] is not None


def test_a_bare_dataset_in_the_task_list_is_named(tiny_model_dir, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "run", "exssnet")
    with pytest.raises(ValueError, match=r"a Dataset in the task list needs a name.*'dataset': ds"):
        ContinualTrainer(build_model(args), args, [Dataset.from_dict(_rows(8, 0))])
