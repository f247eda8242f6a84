"""The Editor: apply any registered method to a loaded model, measure, and restore exactly.

    editor = Editor(model, tok)
    result = editor.edit([EditRequest(prompt=..., target_new=..., subject=...)], method="ft-m")
    print(result.summary["post"])
    result.restore()          # weights bit-identical to before the edit

Modes:
  single      each request edited on the original model, evaluated, then undone (model unchanged after)
  batch       all requests in one application of the method
  sequential  requests applied one after another, accumulating; evaluated after the last one
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .evaluate.evaluator import EvalConfig, observe, score, summarize
from .hparams import HParams, InvalidHparams, load_hparams
from .methods import CompositeHandle, EditHandle, EditMethod, get_method
from .models.adapters import ModelAdapter
from .requests import EditRequest, InvalidRequest
from .tokens import encode_prompt, encode_target, context_length

log = logging.getLogger(__name__)
MODES = ("single", "batch", "sequential")


@dataclass
class EditResult:
    method: str
    mode: str
    hparams: dict[str, Any]
    cases: list[dict[str, Any]]
    summary: dict[str, dict[str, float | None]]
    seconds: float
    handle: EditHandle = field(repr=False, default_factory=CompositeHandle)

    def restore(self) -> None:
        """Undo every edit this result applied (no-op in single mode, which undoes as it goes)."""
        self.handle.restore()

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "mode": self.mode, "hparams": self.hparams, "seconds": self.seconds,
                "summary": self.summary, "cases": self.cases}


class Editor:
    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.adapter = ModelAdapter(model)
        # one instance per method for the editor's life: methods may keep state across calls
        # (e.g. AlphaEdit's keys of earlier edits)
        self._methods: dict[str, EditMethod] = {}

    def method(self, name: str) -> EditMethod:
        m = get_method(name)
        return self._methods.setdefault(m.name, m)

    def prepare(self, requests, method: str, hparams=None, mode: str = "sequential"):
        """Validate everything before the model is touched; returns (method, hparams, requests)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        m = self.method(method)
        hp = self.resolve_hparams(m, hparams)
        reqs = self._requests(requests)
        if m.needs_subject:
            for r in reqs:
                r.require_subject(m.name)
        if mode == "batch" and not m.supports_batch and len(reqs) > 1:
            raise InvalidRequest(f"method {m.name!r} edits one request at a time; use mode='sequential'")
        return m, hp, reqs

    # --- validation: everything is checked before the model is touched --------------------
    def _requests(self, requests) -> list[EditRequest]:
        if isinstance(requests, (EditRequest, dict)):
            requests = [requests]
        reqs = [r if isinstance(r, EditRequest) else EditRequest.from_dict(r) for r in requests]
        if not reqs:
            raise InvalidRequest("no edit requests given")
        limit = context_length(self.model)
        for r in reqs:
            prompts = [r.prompt, *r.rephrase_prompts, *(p.prompt for p in r.locality), *(p.prompt for p in r.portability)]
            for p in prompts:
                n = len(encode_prompt(self.tok, p)) + len(encode_target(self.tok, p, r.target_new))
                if limit is not None and n > limit:
                    raise InvalidRequest(f"prompt of {n} tokens (with target) exceeds the model context of {limit}: {p[:80]!r}...")
        return reqs

    def resolve_hparams(self, method: EditMethod, hparams: HParams | dict | str | Path | None) -> HParams:
        if isinstance(hparams, method.hparams_cls):
            return hparams
        if isinstance(hparams, HParams):
            raise InvalidHparams(f"{method.name} takes {method.hparams_cls.__name__}, got {type(hparams).__name__}")
        if isinstance(hparams, (str, Path)):
            return load_hparams(method.hparams_cls, method.name, self.adapter.model_type, path=hparams)
        return load_hparams(method.hparams_cls, method.name, self.adapter.model_type, overrides=hparams or {})

    # --- editing -----------------------------------------------------------------------------
    def apply(self, requests, method: str = "ft-m", hparams=None) -> EditHandle:
        """Apply an edit without evaluating it; returns the handle that undoes it."""
        return self.edit(requests, method=method, hparams=hparams, mode="batch", evaluate=False).handle

    def edit(self, requests, method: str = "ft-m", hparams=None, mode: str = "sequential",
             evaluate: bool = True, eval_config: EvalConfig | None = None) -> EditResult:
        m, hp, reqs = self.prepare(requests, method, hparams, mode)
        cfg = eval_config or EvalConfig()

        pre = observe(self.model, self.tok, reqs, cfg) if evaluate else None
        handle = CompositeHandle()
        post: list[dict[str, Any] | None] = [None] * len(reqs)
        edit_seconds = 0.0
        try:
            if mode == "batch":
                t = time.perf_counter()
                handle.append(m.apply(self.model, self.tok, self.adapter, reqs, hp))
                edit_seconds += time.perf_counter() - t
            else:
                for i, r in enumerate(reqs):
                    t = time.perf_counter()
                    h = m.apply(self.model, self.tok, self.adapter, [r], hp)
                    edit_seconds += time.perf_counter() - t
                    if mode == "single":
                        if evaluate:
                            post[i] = observe(self.model, self.tok, [r], cfg)[0]
                        h.restore()
                    else:
                        handle.append(h)
            if evaluate and mode != "single":
                post = observe(self.model, self.tok, reqs, cfg)
        except BaseException:
            handle.restore()  # all or nothing: a failed run leaves the model as it was
            raise
        cases = []
        for i, r in enumerate(reqs):
            case = {"case_id": r.case_id if r.case_id is not None else i, "request": r.to_dict()}
            if evaluate:
                case["pre"] = score(r, pre[i], answers=cfg.answers)
                case["post"] = score(r, post[i], reference=pre[i], answers=cfg.answers)
                case["generations"] = {"pre": pre[i]["gen"], "post": post[i]["gen"]}
            cases.append(case)
        summary = {"pre": summarize([c["pre"] for c in cases]), "post": summarize([c["post"] for c in cases])} if evaluate else {}
        log.info("%s/%s: %d request(s) edited in %.2fs", m.name, mode, len(reqs), edit_seconds)
        return EditResult(m.name, mode, hp.to_dict(), cases, summary, round(edit_seconds, 4), handle)
