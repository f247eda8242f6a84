"""One registry of datasets: a name -> (loader, default file, expected record count, description).

Datasets are data: :data:`DATASETS` below is the table of staged files (paths relative to
:func:`lmedit.paths.shared_data_dir`, i.e. ``$LMEDIT_DATA`` or ``../shared/data``), their format (a key of
:data:`FORMATS`) and the record count stated in the folder's PROVENANCE.md. ``expected_count`` counts RECORDS IN THE
FILE; ``known_invalid`` says how many of them cannot become an EditRequest (so the default, strict load of that
dataset raises DatasetError and ``skip_invalid=True`` returns ``expected_count - known_invalid`` requests).

    load_dataset("counterfact-edit", limit=100)                      # staged file
    load_dataset("zsre-mend-eval", path="my_zsre.json")              # same format, your file
    load_file("my_cf.json", "counterfact")                           # any file, by format name
    register_dataset("my-set", load_counterfact, "/data/my_cf.json", expected_count=500, description="...")
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..paths import shared_data_dir
from .base import DatasetError, Loaded
from .cknowedit import load_cknowedit
from .counterfact import load_counterfact
from .knowedit import load_knowedit, load_knowedit_convsent, load_knowedit_sanitation, load_knowedit_wikibio
from .knowns import load_knowns
from .personality import load_personality
from .pitfalls import load_pitfalls_conflict, load_pitfalls_round
from .safeedit import load_safeedit
from .wise import load_wise
from .zsre import load_zsre_mend

Loader = Callable[..., Loaded]

FORMATS: dict[str, Loader] = {
    "counterfact": load_counterfact,
    "zsre-mend": load_zsre_mend,
    "knowedit": load_knowedit,
    "knowedit-wikibio": load_knowedit_wikibio,
    "knowedit-convsent": load_knowedit_convsent,
    "knowedit-sanitation": load_knowedit_sanitation,
    "wise": load_wise,
    "cknowedit": load_cknowedit,
    "personality": load_personality,
    "pitfalls-conflict": load_pitfalls_conflict,
    "pitfalls-round": load_pitfalls_round,
    "safeedit": load_safeedit,
    "knowns": load_knowns,
}

# formats whose targets are passages or chat responses, not a few words: generation-based scores give
# them as many new tokens as the target has and end the answer after as many sentences (EvalConfig.answers)
LONG_ANSWER_FORMATS = ("knowedit-wikibio", "knowedit-convsent", "wise")

# name, format, file (relative to the shared data dir), records in the file (PROVENANCE.md), known invalid, description
DATASETS: list[tuple[str, str, str, int, int, str]] = [
    ("zsre-mend-eval", "zsre-mend", "zsre/zsre_mend_eval_portability_gpt4.json", 1037, 0,
     "zsRE MEND eval records with a GPT-4 one-hop portability question"),
    ("zsre-mend-train", "zsre-mend", "zsre/zsre_mend_train-1k.json", 1000, 2,
     "zsRE MEND train, 1k subset (2 records have an empty 'alt': load with skip_invalid=True)"),
    ("counterfact-edit", "counterfact", "counterfact/easyedit_counterfact-edit.json", 10000, 0,
     "CounterFact, EasyEdit flattening, edit split (case_ids disjoint from train/val)"),
    ("counterfact-train", "counterfact", "counterfact/easyedit_counterfact-train.json", 10000, 0,
     "CounterFact, EasyEdit flattening, train split"),
    ("counterfact-val", "counterfact", "counterfact/easyedit_counterfact-val.json", 1919, 0,
     "CounterFact, EasyEdit flattening, val split"),
    ("knowedit-zsre", "knowedit", "knowedit/ZsRE/ZsRE-test-all.json", 1301, 0,
     "KnowEdit ZsRE test (Relation_Specificity locality; Reasoning/Subject_Aliasing/Logical_Generalization portability)"),
    ("knowedit-wiki-recent", "knowedit", "knowedit/wiki_recent/recent_train.json", 570, 0,
     "KnowEdit WikiData_recent TRAIN split (test split not staged); no ground truth"),
    ("knowedit-wiki-counterfact", "knowedit", "knowedit/wiki_counterfact/train_cf.json", 1428, 0,
     "KnowEdit WikiData_counterfact TRAIN split (test split not staged)"),
    ("knowedit-wikibio-test", "knowedit-wikibio", "knowedit/WikiBio/wikibio-test-all.json", 306, 0,
     "KnowEdit WikiBio hallucination correction, test"),
    ("knowedit-wikibio-train", "knowedit-wikibio", "knowedit/WikiBio/wikibio-train-all.json", 464, 0,
     "KnowEdit WikiBio hallucination correction, train"),
    ("knowedit-convsent-test", "knowedit-convsent", "knowedit/convsent/blender_test.json", 800, 0,
     "KnowEdit ConvSent sentiment editing, test (target: positive opinion)"),
    ("knowedit-convsent-val", "knowedit-convsent", "knowedit/convsent/blender_val.json", 799, 0,
     "KnowEdit ConvSent sentiment editing, val (target: positive opinion)"),
    ("knowedit-sanitation-test", "knowedit-sanitation", "knowedit/Sanitation/trivia_qa_test.json", 80, 0,
     "KnowEdit Sanitation (TriviaQA -> \"I don't know.\"), test; 453 retain questions spread as locality"),
    ("knowedit-sanitation-train", "knowedit-sanitation", "knowedit/Sanitation/trivia_qa_train.json", 80, 0,
     "KnowEdit Sanitation, train (K_F forget set; 453 K_R retain questions spread as locality)"),
    ("wise-hallucination-edit", "wise", "wikibio_hallucination/hallucination-edit.json", 600, 0,
     "WISE/GRACE WikiBio hallucination edits"),
    ("wise-hallucination-train", "wise", "wikibio_hallucination/hallucination-train.json", 306, 0,
     "WISE/GRACE WikiBio hallucination, train"),
    ("wise-temporal-edit", "wise", "wise_temporal/temporal-edit.json", 75, 0,
     "WISE temporal long-form entity descriptions, edit"),
    ("wise-temporal-train", "wise", "wise_temporal/temporal-train.json", 75, 0,
     "WISE temporal long-form entity descriptions, train"),
    ("cknowedit", "cknowedit", "cknowedit/ccks-CKnowEdit.json", 700, 0,
     "CKnowEdit (Chinese), CCKS-2024 release; no subjects"),
    ("personality-train", "personality", "personalityedit/train.json", 1600, 0,
     "PersonalityEdit train (target personality rotates by index)"),
    ("personality-dev", "personality", "personalityedit/dev.json", 200, 0,
     "PersonalityEdit dev (target personality rotates by index)"),
    ("personality-test", "personality", "personalityedit/test.json", 200, 0,
     "PersonalityEdit test (target personality from the record)"),
    ("pitfalls-reverse", "pitfalls-conflict", "pitfalls/reverse_edit.json", 2500, 0,
     "ConflictEdit reverse pairs (GPT-J); second edit in meta['conflict']"),
    ("pitfalls-composite", "pitfalls-conflict", "pitfalls/composite_edit.json", 2500, 0,
     "ConflictEdit composite pairs (GPT-J); second edit in meta['conflict']"),
    ("pitfalls-coverage", "pitfalls-conflict", "pitfalls/coverage_edit.json", 2500, 0,
     "ConflictEdit coverage pairs (GPT-J); second edit in meta['conflict']"),
    ("pitfalls-round-easy", "pitfalls-round", "pitfalls/easy.json", 2500, 0,
     "RoundEdit easy (GPT-J); edit back in meta['round_trip']"),
    ("pitfalls-round-hard", "pitfalls-round", "pitfalls/hard.json", 2500, 0,
     "RoundEdit hard (GPT-J); edit back in meta['round_trip']"),
    ("safeedit-inputs", "safeedit", "safeedit/nlpcc2024_detoxify_val_SafeEdit_test_ALL_inputs.json", 540, 0,
     "SafeEdit test inputs (no gold responses: target_new is a placeholder refusal)"),
    ("knowns", "knowns", "knowns/known_1000.json", 1209, 0,
     "ROME known_1000 facts for causal tracing (target_new == target_true == attribute)"),
]


class UnknownDataset(ValueError):
    """No dataset is registered under this name."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Loader
    default_path: str
    expected_count: int | None = None
    description: str = ""
    format: str | None = None
    known_invalid: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    answers: str = "short"  # "short" | "long": the kind of targets (see LONG_ANSWER_FORMATS)

    @property
    def path(self) -> Path:
        """The default file, resolved now (relative paths against the shared data dir, so $LMEDIT_DATA counts)."""
        p = Path(self.default_path).expanduser()
        return p if p.is_absolute() else shared_data_dir() / p


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(name: str, loader_fn: Loader, default_path: str | Path, expected_count: int | None = None,
                     description: str = "", *, format: str | None = None, known_invalid: int = 0,
                     options: dict[str, Any] | None = None, answers: str | None = None,
                     overwrite: bool = False) -> DatasetInfo:
    """Register a dataset. ``default_path`` is absolute, or relative to the shared data dir.

    ``loader_fn(path, *, limit=None, skip_invalid=False, **options) -> Loaded``; ``options`` are passed to it on every
    load. ``answers`` ("short" or "long": passages, chat responses) says how generation-based scores treat its
    targets; None: "long" for the formats in LONG_ANSWER_FORMATS, else "short". Registering an existing name
    raises ValueError unless ``overwrite=True``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if not callable(loader_fn):
        raise TypeError(f"loader_fn must be callable, got {loader_fn!r}")
    if answers is None:
        answers = "long" if format in LONG_ANSWER_FORMATS else "short"
    if answers not in ("short", "long"):
        raise ValueError(f"answers must be 'short' or 'long', got {answers!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered (pass overwrite=True to replace it)")
    info = DatasetInfo(name=name, loader=loader_fn, default_path=str(default_path), expected_count=expected_count,
                       description=description, format=format, known_invalid=known_invalid, options=dict(options or {}),
                       answers=answers)
    _REGISTRY[name] = info
    return info


def list_datasets() -> list[str]:
    """Registered dataset names, in registration order."""
    return list(_REGISTRY)


def get_dataset(name: str) -> DatasetInfo:
    """The registration of ``name``; UnknownDataset (with close names suggested) if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        if not close:
            close = [n for n in _REGISTRY if name.lower() in n.lower()][:3]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownDataset(f"unknown dataset {name!r}{hint} (`lmedit data list` shows all "
                             f"{len(_REGISTRY)})") from None


def load_dataset(name: str, path: str | Path | None = None, limit: int | None = None, skip_invalid: bool = False,
                 **options: Any) -> Loaded:
    """Load a registered dataset as a list of EditRequests (a :class:`Loaded`, with ``.skipped``).

    path:         read this file instead of the staged one (same format)
    limit:        return at most this many requests (the first valid ones, in file order)
    skip_invalid: skip records that cannot become an EditRequest (logged, listed in ``.skipped``) instead of raising
    options:      loader-specific options (e.g. ``sentiment="neg"`` for ConvSent), override the registered ones
    """
    info = get_dataset(name)
    file = Path(path).expanduser() if path is not None else info.path
    if path is None and not file.is_file():
        raise DatasetError(f"{file}: no such file (dataset {name!r}; staged data dir is {shared_data_dir()}, "
                           f"set $LMEDIT_DATA or pass path=...)")
    out = info.loader(file, limit=limit, skip_invalid=skip_invalid, **{**info.options, **options})
    out.name = name
    return out


def load_file(path: str | Path, format: str, limit: int | None = None, skip_invalid: bool = False,
              **options: Any) -> Loaded:
    """Load any file in one of the known formats (:data:`FORMATS`)."""
    if format not in FORMATS:
        close = difflib.get_close_matches(format, list(FORMATS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown format {format!r}{hint} (known: {', '.join(FORMATS)})")
    return FORMATS[format](Path(path).expanduser(), limit=limit, skip_invalid=skip_invalid, **options)


for _name, _fmt, _file, _count, _invalid, _desc in DATASETS:
    register_dataset(_name, FORMATS[_fmt], _file, expected_count=_count, description=_desc, format=_fmt,
                     known_invalid=_invalid)
