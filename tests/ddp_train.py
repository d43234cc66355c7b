"""Launched by test_two_process_run: trains, then each rank writes a fingerprint of every tensor it holds."""

import hashlib
import json
import os
import sys

from accelerate import PartialState

from exssnet_nlp.training import ContinualCallback, ContinualTrainer, build_model, load_training_config


class Fingerprint(ContinualCallback):
    def on_train_end(self, trainer, results):
        state = PartialState()
        model = trainer.model
        tensors = {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
                   for k, v in model.state_dict().items()}
        out = os.environ["EXSSNET_TEST_FINGERPRINT_DIR"]
        with open(os.path.join(out, f"fingerprint_rank{state.process_index}.json"), "w") as f:
            json.dump({"num_processes": state.num_processes, "tensors": tensors}, f)


if __name__ == "__main__":
    args, tasks = load_training_config(sys.argv[sys.argv.index("--config") + 1], [])
    ContinualTrainer(build_model(args), args, tasks, callbacks=[Fingerprint()]).train()
