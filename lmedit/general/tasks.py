"""General-ability tasks as data: the definitions in tasks.yaml, record loading, prompt rendering, sampling."""
from __future__ import annotations

import difflib
import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ..paths import shared_data_dir

TASKS_FILE = Path(__file__).with_name("tasks.yaml")
LETTERS = "ABCDEFGHIJ"
_KINDS = ("choice", "generate")
_METRICS = ("accuracy", "f1", "mcc")


class UnknownTask(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class GeneralDataError(ValueError):
    """A task's data file is missing or a record does not fit the task definition."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    file: str
    version: int
    kind: str
    template: str
    description: str = ""
    options: tuple[str, ...] = ()
    option_field: str | None = None
    option_prefix: str = " "
    choices_field: str | None = None
    label_field: str | None = None
    label_map: dict[str, int] = field(default_factory=dict)
    positive: int | None = None
    metrics: tuple[str, ...] = ("accuracy",)
    normalize: bool = False
    answer_field: str | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        where = f"task {self.name!r} in {TASKS_FILE.name}"
        if self.kind not in _KINDS:
            raise ValueError(f"{where}: kind must be one of {_KINDS}, got {self.kind!r}")
        bad = [m for m in self.metrics if m not in _METRICS]
        if bad:
            raise ValueError(f"{where}: unknown metric(s) {bad}; known: {_METRICS}")
        if self.kind == "choice":
            if bool(self.options) == bool(self.option_field):
                raise ValueError(f"{where}: give exactly one of `options` or `option_field`")
            if not self.label_field or not self.label_map:
                raise ValueError(f"{where}: a choice task needs label_field and label_map")
            if self.options and any(not 0 <= i < len(self.options) for i in self.label_map.values()):
                raise ValueError(f"{where}: label_map points outside the {len(self.options)} options")
            if ("f1" in self.metrics or "mcc" in self.metrics) and (self.positive is None or len(self.options) != 2):
                raise ValueError(f"{where}: f1/mcc need two fixed options and `positive`")
        elif not self.answer_field:
            raise ValueError(f"{where}: a generate task needs answer_field")

    @property
    def path(self) -> Path:
        return shared_data_dir() / "general_eval" / self.file

    # ---- records -> prompts, options, labels
    def fields(self, rec: dict) -> dict[str, Any]:
        """The record's fields plus the derived ones the templates may use."""
        f = {k: v.strip() if isinstance(v, str) else v for k, v in rec.items()}
        if self.choices_field:
            choices = rec[self.choices_field]
            f["choices_block"] = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        if "subject" in rec and isinstance(rec["subject"], str):
            f["subject_name"] = rec["subject"].replace("_", " ")
        if isinstance(rec.get("evidences"), list):
            f["passage"] = " ".join(e["text"].strip() for e in rec["evidences"])
        if isinstance(rec.get("query"), str):
            q = rec["query"].strip()
            f["query_q"] = q if q.endswith("?") else q + "?"
        return f

    def render(self, rec: dict) -> str:
        try:
            return self.template.format(**self.fields(rec))
        except (KeyError, IndexError) as e:
            raise GeneralDataError(f"task {self.name}: record lacks field {e} needed by the template") from None

    def options_for(self, rec: dict) -> list[str]:
        if self.options:
            return list(self.options)
        opts = rec.get(self.option_field)
        if not isinstance(opts, list) or not opts:
            raise GeneralDataError(f"task {self.name}: record field {self.option_field!r} is not a list of options")
        return [self.option_prefix + str(o).strip() for o in opts]

    def label(self, rec: dict) -> int:
        """The index of the gold option; the record's label is looked up as a string."""
        raw = rec.get(self.label_field)
        key = str(raw)
        if key not in self.label_map:
            raise GeneralDataError(f"task {self.name}: label {raw!r} in field {self.label_field!r} is not one of "
                                   f"{sorted(self.label_map)}")
        return self.label_map[key]

    def reference(self, rec: dict) -> str:
        """(generate) The reference number: the text after '####' with commas removed."""
        ans = rec.get(self.answer_field)
        if not isinstance(ans, str) or "####" not in ans:
            raise GeneralDataError(f"task {self.name}: field {self.answer_field!r} has no '####' final answer")
        return normalize_number(ans.split("####")[-1].strip())

    # ---- data
    def load(self) -> list[dict]:
        return _read_jsonl(str(self.path))

    def sample(self, n: int | None, seed: int = 0) -> list[int]:
        """Deterministic record indices: a seeded shuffle of the whole file, first n (nested: n=50 is in n=100)."""
        total = len(self.load())
        order = list(range(total))
        random.Random(f"lmedit.general/{self.name}/{seed}").shuffle(order)
        return order if n is None or n <= 0 else order[:n]


@lru_cache(maxsize=32)
def _read_jsonl(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise GeneralDataError(f"task data file not found: {p} (set $LMEDIT_DATA to the folder that holds "
                               f"general_eval/)")
    recs = []
    with p.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise GeneralDataError(f"{p}, line {i}: not JSON: {e}") from None
    return recs


@lru_cache(maxsize=1)
def _specs() -> dict[str, TaskSpec]:
    data = yaml.safe_load(TASKS_FILE.read_text(encoding="utf-8"))
    out = {}
    for name, d in data.items():
        d = dict(d)
        for k in ("options", "metrics", "stop"):
            if k in d:
                d[k] = tuple(d[k])
        if "label_map" in d:
            d["label_map"] = {str(k): int(v) for k, v in d["label_map"].items()}
        out[name] = TaskSpec(name=name, **d)
    return out


def list_tasks() -> list[str]:
    return list(_specs())


def get_task(name: str) -> TaskSpec:
    specs = _specs()
    if name not in specs:
        close = difflib.get_close_matches(name, list(specs), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownTask(f"unknown general task {name!r}.{hint} Available: {', '.join(specs)}")
    return specs[name]


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_number(s: str) -> str:
    """'1,234' -> '1234', '3.50' -> '3.5', '7.0' -> '7', '-0' -> '0'."""
    s = s.replace(",", "").strip().rstrip(".")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0" if s == "-0" else s
    return s


def extract_number(text: str) -> str | None:
    """The last number in a text, commas removed and trailing zeros of decimals dropped; None when there is none."""
    found = _NUM.findall(text)
    if not found:
        return None
    return normalize_number(found[-1])
