"""What a benchmark run is: one declared configuration, saved beside its results."""
from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from typing import Any

from ..evaluate.evaluator import ANSWER_KINDS

PROTOCOLS = ("single", "batch", "sequential")

# fields that may differ between a run and its --resume without changing its results
RESUME_FREE = {"workers", "ray", "progress", "pre_from", "save_every"}
# settings that decide what the unedited model is asked and how: a run may reuse another's pre-edit
# observations (--pre-from) only when these agree
PRE_EVAL_KEYS = ("model", "dataset", "data_path", "start", "skip_invalid", "generation", "max_new_tokens",
                 "answers", "cf_scores", "dtype", "device")


def dataset_answers(name: str) -> str:
    """The kind of answers a registered dataset has ("short" for names not registered: loading them fails later)."""
    from ..data import UnknownDataset, get_dataset

    try:
        return get_dataset(name).answers
    except UnknownDataset:
        return "short"


@dataclass
class RunConfig:
    model: str = "smollm2-135m"
    method: str = "ft-m"
    dataset: str = "counterfact-edit"
    data_path: str | None = None  # the dataset's format, your file
    start: int = 0  # first record of the slice
    n: int | None = 100  # number of cases (None = all from start)
    protocol: str = "single"  # single | batch | sequential
    batch_size: int = 1  # requests per edit (batch protocol: B; sequential: edits per step)
    checkpoints: list[int] = field(default_factory=list)  # sequential: evaluate after these many edits too
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of the method's defaults
    hparams_file: str | None = None
    seed: int = 0
    generation: bool = True  # generation-based metrics (slower)
    max_new_tokens: int = 24
    answers: str | None = None  # "short" | "long" (see EvalConfig); None: the dataset's kind
    cf_scores: bool = True  # CounterFact ES/PS/NS too (3 more scored pairs per case with a target_true)
    general_tasks: list[str] = field(default_factory=list)  # general-ability tasks before and at checkpoints
    general_n: int = 50
    skip_invalid: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    workers: int = 1  # single/batch protocol: shard cases over processes
    ray: str | None = None  # "auto" or a cluster address: shard over Ray instead
    progress: bool = True
    pre_from: str | None = None  # reuse this run directory's pre-edit observations (same settings)
    save_every: int = 50  # sequential: also save the edited weights every this many edits (0: at checkpoints only)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; use one of {PROTOCOLS}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.n is not None and self.n < 1:
            raise ValueError("n must be >= 1")
        if self.start < 0:
            raise ValueError("start must be >= 0")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.protocol == "sequential" and (self.workers > 1 or self.ray):
            raise ValueError("a sequential run is one chain of edits; it cannot be sharded over workers")
        if self.save_every < 0:
            raise ValueError("save_every must be >= 0")
        if any(c < 1 for c in self.checkpoints):
            raise ValueError("checkpoints must be >= 1")
        self.checkpoints = sorted(set(self.checkpoints))
        if self.answers is None:  # resolved here, so that a saved run (older ones lack the key) says it
            self.answers = dataset_answers(self.dataset)
        if self.answers not in ANSWER_KINDS:
            raise ValueError(f"answers must be one of {ANSWER_KINDS}, got {self.answers!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown run setting(s) {sorted(unknown)}")
        return cls(**d)

    def same_run(self, other: "RunConfig") -> list[str]:
        """Names of settings that differ in a way that would change results."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUME_FREE and a[k] != b[k]]


def environment() -> dict[str, str]:
    import torch
    import transformers

    from .. import __version__

    return {"lmedit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
