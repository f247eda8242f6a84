"""Dataset loaders: staged knowledge-editing benchmarks (or your own files in their formats) as EditRequest lists.

    from lmedit.data import load_dataset, list_datasets
    reqs = load_dataset("counterfact-edit", limit=100)
    reqs = load_dataset("zsre-mend-train", skip_invalid=True); reqs.skipped   # [(record index, reason), ...]

Each format's module docstring (counterfact, zsre, knowedit, wise, cknowedit, personality, pitfalls, safeedit,
knowns) says how its records map to EditRequest fields and which decisions were taken.
"""
from .base import DatasetError, Loaded
from .pitfalls import expand_edits
from .registry import (DATASETS, FORMATS, DatasetInfo, UnknownDataset, get_dataset, list_datasets, load_dataset,
                       load_file, register_dataset)

__all__ = ["DatasetError", "Loaded", "expand_edits", "DATASETS", "FORMATS", "DatasetInfo", "UnknownDataset",
           "get_dataset", "list_datasets", "load_dataset", "load_file", "register_dataset"]
