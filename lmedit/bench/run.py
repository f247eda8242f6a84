"""Run a benchmark: a method over a dataset slice under one protocol, streaming results to disk.

Run directory:
    config.json        the RunConfig, resolved hparams, dataset facts, package versions
    cases.jsonl        one line per finished case (cases.w<k>.jsonl per worker when sharded)
    pre.jsonl          the unedited model's observation of each case (pre.w<k>.jsonl per worker)
    checkpoints.jsonl  sequential: metrics over the edits made so far, at each checkpoint
    general.jsonl      general-ability scores before editing and at each checkpoint
    state/             sequential: the edited weights (and the method's own memory, see
                       EditMethod.resume_state) at the last checkpoint or every `save_every` edits
    summary.json, report.md, plots/*.png   written at the end (see report.py)

Every line is appended and flushed as soon as it is known, so a run killed half-way loses at
most the case (or the edits since the last save) it was working on; `resume=True` skips what is
already on disk. A method that cannot save its state (none of the built-in ones) restarts its
sequence on resume; its pre-edit observations are still kept.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from ..evaluate.evaluator import EvalConfig, observe, score
from ..methods.base import CompositeHandle, WeightEdit
from .config import PRE_EVAL_KEYS, RunConfig, environment

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    pass


# per-edit scores kept at every sequential checkpoint (checkpoint_cases.jsonl) for retention curves
RETENTION_METRICS = ("tf_reliability", "tf_generalization", "tf_locality", "gen_reliability", "cf_es")
# a sequential run observes the unedited model on all its cases up front, this many at a time
SEQUENTIAL_OBSERVE_BATCH = 32


# --- files ----------------------------------------------------------------------------------

def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: ignoring an incomplete line (interrupted write)", path)
    return rows


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def case_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for f in sorted(run_dir.glob("cases*.jsonl")):
        rows += read_jsonl(f)
    return sorted(rows, key=lambda r: r["index"])


# --- setup ----------------------------------------------------------------------------------

def load_cases(cfg: RunConfig):
    from ..data import load_dataset

    limit = None if cfg.n is None else cfg.start + cfg.n
    loaded = load_dataset(cfg.dataset, path=cfg.data_path, limit=limit, skip_invalid=cfg.skip_invalid)
    reqs = list(loaded)[cfg.start:]
    if not reqs:
        raise RunError(f"dataset {cfg.dataset} has no cases in the slice start={cfg.start}, n={cfg.n}")
    return reqs, {"path": str(loaded.path), "skipped": len(loaded.skipped), "cases": len(reqs)}


def prepare_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    cfg_file = run_dir / "config.json"
    if cfg_file.is_file():
        if not resume:
            raise RunError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another directory")
        saved = RunConfig.from_dict(json.loads(cfg_file.read_text())["config"])
        diff = cfg.same_run(saved)
        if diff:
            raise RunError(f"cannot resume {run_dir}: settings differ from the saved run: {diff}")
    run_dir.mkdir(parents=True, exist_ok=True)


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _eval_cfg(cfg: RunConfig) -> EvalConfig:
    return EvalConfig(generation=cfg.generation, max_new_tokens=cfg.max_new_tokens, counterfact=cfg.cf_scores,
                      answers=cfg.answers)


def _row(cfg: RunConfig, index: int, req, pre_obs, post_obs, seconds: float) -> dict[str, Any]:
    return {"index": index, "case_id": req.case_id, "prompt": req.prompt, "target_new": req.target_new,
            "pre": score(req, pre_obs, answers=cfg.answers),
            "post": score(req, post_obs, reference=pre_obs, answers=cfg.answers),
            "generations": {"pre": pre_obs["gen"], "post": post_obs["gen"]}, "edit_seconds": round(seconds, 4)}


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --- protocols --------------------------------------------------------------------------------

def run_independent(cfg: RunConfig, editor, reqs, out: Path, todo: list[int]) -> None:
    """single / batch: every batch of B cases is edited on the original model, scored, undone.

    The unedited model's observations go to the pre file beside `out` (pre.jsonl, pre.w<k>.jsonl), so
    a resumed run or another run (--pre-from) does not observe them again."""
    m, hp, _ = editor.prepare(reqs[:1], cfg.method, cfg.hparams_file or cfg.hparams)
    size = 1 if cfg.protocol == "single" else cfg.batch_size
    ecfg = _eval_cfg(cfg)
    known = known_pre(cfg, out.parent, len(reqs))
    pre_out = out.with_name(out.name.replace("cases", "pre", 1))
    bar = tqdm(total=len(todo), desc=f"{cfg.method} {cfg.protocol}", disable=not cfg.progress)
    for chunk in _chunks(todo, size):
        batch = [reqs[i] for i in chunk]
        if any(i not in known for i in chunk):  # observed as the batch it is edited in (see observation_batch)
            for i, o in zip(chunk, observe(editor.model, editor.tok, batch, ecfg)):
                known[i] = o
                append_jsonl(pre_out, {"index": i, "obs": o})
        pre = [known[i] for i in chunk]
        t = time.perf_counter()
        handle = m.apply(editor.model, editor.tok, editor.adapter, batch, hp)
        seconds = time.perf_counter() - t
        try:
            post = observe(editor.model, editor.tok, batch, ecfg)
        finally:
            handle.restore()
        for i, r, a, b in zip(chunk, batch, pre, post):
            append_jsonl(out, _row(cfg, i, r, a, b, seconds / len(batch)))
        bar.update(len(chunk))
    bar.close()


def _save_state(run_dir: Path, model, handle: CompositeHandle, method, edits_done: int,
                edit_seconds: float = 0.0) -> None:
    """The edited weights (and any method state) after `edits_done` edits, written atomically."""
    from safetensors.torch import save_file

    params: dict[str, torch.Tensor] = {}
    if not method.can_resume():
        # a method with edits outside the weights and no `resume_state`: nothing saved,
        # an interrupted run of it restarts its sequence (`run_sequential` drops stale checkpoints)
        log.warning("%s: no resumable state (it does not save its added parameters); --resume restarts the sequence",
                    method.name)
        return
    for h in handle.handles:
        if isinstance(h, WeightEdit):
            params.update({n: p.detach().cpu().contiguous() for n, p in h.params.items()})
    state = run_dir / "state"
    tmp = run_dir / "state.tmp"
    tmp.mkdir(exist_ok=True)
    save_file(params, str(tmp / "weights.safetensors"))
    extra = method.resume_state(model)
    if extra is not None:
        torch.save(extra, tmp / "method.pt")
    (tmp / "state.json").write_text(json.dumps({"edits_done": edits_done, "edit_seconds": edit_seconds}))
    if state.exists():
        old = run_dir / "state.old"
        os.replace(state, old)
        os.replace(tmp, state)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, state)


def _load_state(run_dir: Path, model, tok, method, hp) -> tuple[int, float]:
    """(edits done, seconds spent editing them) of the saved state, after loading it into the model."""
    from safetensors.torch import load_file

    state = run_dir / "state"
    if not (state / "state.json").is_file():
        return 0, 0.0
    weights = load_file(str(state / "weights.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    if (state / "method.pt").is_file():
        device = next(model.parameters()).device
        method.load_resume_state(model, tok, hp, torch.load(state / "method.pt", map_location=device))
    saved = json.loads((state / "state.json").read_text())
    return saved["edits_done"], saved.get("edit_seconds", 0.0)


def observation_batch(cfg: RunConfig) -> int:
    """How many cases the unedited model is shown at once. Batches pad differently, and padding can flip
    a near-tie between two tokens (measured: 1 of 160 teacher-forced predictions on 40 ZsRE cases), so
    observations are reused only between runs that batch them alike."""
    return {"single": 1, "batch": cfg.batch_size, "sequential": SEQUENTIAL_OBSERVE_BATCH}[cfg.protocol]


def _pre_rows(run_dir: Path, n_cases: int) -> list[dict[str, Any]]:
    rows = []
    for f in sorted(run_dir.glob("pre*.jsonl")):
        rows += [r for r in read_jsonl(f) if r["index"] < n_cases]
    return rows


def reused_pre(cfg: RunConfig, source: Path, n_cases: int) -> list[dict[str, Any]]:
    """Another run's pre-edit observations of this run's cases, after checking that they were made the same way."""
    cfg_file = source / "config.json"
    if not cfg_file.is_file():
        raise RunError(f"--pre-from {source}: not a run directory (no config.json)")
    theirs = RunConfig.from_dict(json.loads(cfg_file.read_text())["config"])
    diff = [k for k in PRE_EVAL_KEYS if getattr(theirs, k) != getattr(cfg, k)]
    if observation_batch(theirs) != observation_batch(cfg):
        diff.append(f"cases observed at once ({observation_batch(theirs)} there, {observation_batch(cfg)} here)")
    if diff:
        raise RunError(f"--pre-from {source}: its unedited-model observations were made with other settings: {diff}")
    rows = _pre_rows(source, n_cases)
    log.info("reusing %d pre-edit observations from %s", len(rows), source)
    return rows


def known_pre(cfg: RunConfig, run_dir: Path, n_cases: int) -> dict[int, Any]:
    """Pre-edit observations already made: by this run (resume) or by the --pre-from run."""
    rows = reused_pre(cfg, Path(cfg.pre_from), n_cases) if cfg.pre_from else []
    return {r["index"]: r["obs"] for r in rows + _pre_rows(run_dir, n_cases)}


def run_sequential(cfg: RunConfig, editor, reqs, run_dir: Path, general) -> None:
    """Edits accumulate; every case is scored after the last edit, and all edits so far at checkpoints."""
    m, hp, _ = editor.prepare(reqs[:1], cfg.method, cfg.hparams_file or cfg.hparams)
    ecfg = _eval_cfg(cfg)
    pre_file = run_dir / "pre.jsonl"
    if cfg.pre_from and not pre_file.is_file():  # a copy, so the run stands on its own
        for row in reused_pre(cfg, Path(cfg.pre_from), len(reqs)):
            append_jsonl(pre_file, row)
    pre = {r["index"]: r["obs"] for r in read_jsonl(pre_file)}
    missing = [i for i in range(len(reqs)) if i not in pre]
    for chunk in _chunks(missing, SEQUENTIAL_OBSERVE_BATCH):  # the unedited model's view of every case, once
        for i, o in zip(chunk, observe(editor.model, editor.tok, [reqs[i] for i in chunk], ecfg)):
            pre[i] = o
            append_jsonl(pre_file, {"index": i, "obs": o})
    done, seconds = _load_state(run_dir, editor.model, editor.tok, m, hp)
    if done:
        log.info("resuming after %d edits", done)
    else:  # starting (or restarting) the sequence: checkpoints of an earlier attempt no longer apply
        for stale in ("checkpoints.jsonl", "checkpoint_cases.jsonl", "general.jsonl"):
            rows = [r for r in read_jsonl(run_dir / stale) if r.get("edits", 0) == 0]
            if (run_dir / stale).is_file():
                (run_dir / stale).unlink()
                for r in rows:
                    append_jsonl(run_dir / stale, r)
    total = len(reqs)
    checkpoints = [c for c in cfg.checkpoints if c < total] + [total]
    handle = CompositeHandle()
    bar = tqdm(total=total, initial=done, desc=f"{cfg.method} sequential", disable=not cfg.progress)
    while done < total:
        nxt = min(c for c in checkpoints if c > done)
        while done < nxt:
            batch = reqs[done:min(done + cfg.batch_size, nxt)]
            t = time.perf_counter()
            handle.append(m.apply(editor.model, editor.tok, editor.adapter, batch, hp))
            seconds += time.perf_counter() - t
            before, done = done, done + len(batch)
            bar.update(len(batch))
            # between checkpoints too, so that a kill loses at most `save_every` edits of a long stretch
            if cfg.save_every and done < nxt and done // cfg.save_every > before // cfg.save_every \
                    and m.can_resume():
                _save_state(run_dir, editor.model, handle, m, done, seconds)
        edited = list(range(done))
        post = observe(editor.model, editor.tok, [reqs[i] for i in edited], ecfg)
        rows = [score(reqs[i], o, reference=pre[i], answers=cfg.answers) for i, o in zip(edited, post)]
        from ..evaluate.evaluator import summarize

        append_jsonl(run_dir / "checkpoints.jsonl", {"edits": done, "summary": summarize(rows),
                                                      "edit_seconds": round(seconds, 3)})
        # every edit's own scores at this checkpoint: how earlier edits fare as later ones arrive
        append_jsonl(run_dir / "checkpoint_cases.jsonl", {"edits": done, "scores": {
            str(i): {k: v for k, v in r.items() if k in RETENTION_METRICS} for i, r in zip(edited, rows)}})
        if general is not None:
            append_jsonl(run_dir / "general.jsonl", {"edits": done, "results": general()})
        if done == total:
            for i, o in zip(edited, post):
                append_jsonl(run_dir / "cases.jsonl", _row(cfg, i, reqs[i], pre[i], o, seconds / total))
        else:
            _save_state(run_dir, editor.model, handle, m, done, seconds)
    bar.close()


# --- entry point ------------------------------------------------------------------------------

def _shard_main(cfg_dict: dict, run_dir: str, shard: int, n_shards: int) -> int:
    """One worker: loads its own model and runs every n_shards-th pending case."""
    cfg = RunConfig.from_dict(cfg_dict)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_shards))
    editor, reqs, _ = _setup(cfg)
    run_dir = Path(run_dir)
    done = {r["index"] for r in case_rows(run_dir)}
    todo = [i for i in range(len(reqs)) if i % n_shards == shard and i not in done]
    run_independent(cfg, editor, reqs, run_dir / f"cases.w{shard}.jsonl", todo)
    return len(todo)


def _setup(cfg: RunConfig):
    from ..editor import Editor
    from ..models import load_model

    _seed(cfg.seed)
    model, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    reqs, info = load_cases(cfg)
    return Editor(model, tok), reqs, info


def run(cfg: RunConfig, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a benchmark and write its report; returns the summary."""
    from .report import write_report

    run_dir = Path(run_dir)
    if cfg.pre_from:  # a source made with other settings is refused before anything is written
        reused_pre(cfg, Path(cfg.pre_from), 0)
    prepare_dir(cfg, run_dir, resume)
    editor, reqs, info = _setup(cfg)
    method, hp, _ = editor.prepare(reqs[:1], cfg.method, cfg.hparams_file or cfg.hparams)
    for r in reqs:  # every case is validated before any edit
        editor.prepare([r], cfg.method, hp)
    if not (run_dir / "config.json").is_file():
        write_json_atomic(run_dir / "config.json", {
            "config": cfg.to_dict(), "hparams": hp.to_dict(), "dataset": info, "environment": environment(),
            "model_type": editor.adapter.model_type, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    general = None
    if cfg.general_tasks:
        from ..general import evaluate_general

        def general():
            return evaluate_general(editor.model, editor.tok, tasks=cfg.general_tasks, n=cfg.general_n, seed=cfg.seed)

        if not any(r["edits"] == 0 for r in read_jsonl(run_dir / "general.jsonl")):
            append_jsonl(run_dir / "general.jsonl", {"edits": 0, "results": general()})

    if cfg.protocol == "sequential":
        if not (run_dir / "cases.jsonl").is_file():
            run_sequential(cfg, editor, reqs, run_dir, general)
    else:
        done = {r["index"] for r in case_rows(run_dir)}
        todo = [i for i in range(len(reqs)) if i not in done]
        if todo and cfg.ray:
            from .distributed import run_ray
            run_ray(cfg, run_dir)
        elif todo and cfg.workers > 1:
            from .distributed import run_processes
            run_processes(cfg, run_dir)
        elif todo:
            run_independent(cfg, editor, reqs, run_dir / "cases.jsonl", todo)
        if general is not None and not any(r["edits"] > 0 for r in read_jsonl(run_dir / "general.jsonl")):
            log.info("general ability after independent edits is not defined (the model is restored each time)")
    return write_report(run_dir)
