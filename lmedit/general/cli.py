"""``lmedit general ...``: list the general-ability tasks and run them on a model."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

general_app = typer.Typer(help="General-ability evaluation (GLUE-style tasks, MMLU, dialogue, GSM8K).",
                          no_args_is_help=True)
_console = Console()
_err = Console(stderr=True)


def _fail(msg: str):
    _err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


@general_app.command("list")
def general_list():
    """The tasks: kind, options, metrics, records in the file, version."""
    from .tasks import get_task, list_tasks

    t = Table(title="general-ability tasks")
    for col in ("task", "kind", "options", "metrics", "records", "version", "description"):
        t.add_column(col, overflow="fold")
    for name in list_tasks():
        s = get_task(name)
        opts = ("/".join(o.strip() for o in s.options) if s.options else f"per record ({s.option_field})") \
            if s.kind == "choice" else "greedy generation"
        recs = str(len(s.load())) if s.path.is_file() else "[red]missing[/]"
        t.add_row(name, s.kind, opts, ",".join(s.metrics), recs, str(s.version), s.description)
    _console.print(t)


def _task_ns(items: list[str]) -> dict[str, int]:
    out = {}
    for it in items:
        if "=" not in it:
            _fail(f"--task-n takes task=N, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = int(v)
        except ValueError:
            _fail(f"--task-n {it!r}: N must be an integer")
    return out


@general_app.command("run")
def general_run(
    model: str = typer.Option("smollm2-135m", help="packaged model name, local folder or hub id"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated tasks (default: all; see `lmedit general list`)"),
    n: int = typer.Option(100, "--n", "-n", help="records per task, a fixed seeded sample (0 = all)"),
    task_n: List[str] = typer.Option([], "--task-n", help="records for one task: task=N (repeatable), e.g. gsm8k=20"),
    seed: int = typer.Option(0, help="sampling seed (same seed = same records = paired comparisons)"),
    batch_size: int = typer.Option(16, help="sequences per forward pass"),
    max_new_tokens: int = typer.Option(128, help="generation length for gsm8k"),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize",
                                             help="force length-normalised (or summed) option scores"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
    predictions: bool = typer.Option(False, help="include per-record predictions in the JSON"),
    output: Optional[Path] = typer.Option(None, help="also write the JSON results here"),
):
    """Score a model on general-ability tasks and print accuracy (and F1/MCC where defined) per task."""
    import torch

    from .. import load_model
    from .runner import _task_names, evaluate_general
    from .tasks import GeneralDataError, UnknownTask

    if threads:
        torch.set_num_threads(threads)
    try:
        names = _task_names(tasks)
        per_task = _task_ns(task_n)
        for k in per_task:
            _task_names([k])
    except (UnknownTask, ValueError) as e:
        _fail(str(e))
    t0 = time.perf_counter()
    try:
        with _console.status(f"loading {model}"):
            m, tok = load_model(model, dtype=dtype, device=device)
        with _console.status(f"evaluating {model} on {', '.join(names)}"):
            res = evaluate_general(m, tok, tasks=names, n=n or None, seed=seed, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, normalize=normalize,
                                   return_predictions=predictions, n_per_task=per_task)
    except (GeneralDataError, UnknownTask, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    wall = time.perf_counter() - t0
    payload = {"model": model, "seed": seed, "wall_seconds": round(wall, 1), "threads": torch.get_num_threads(),
               "results": res}
    if output:
        output.write_text(json.dumps(payload, indent=2))
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    t = Table(title=f"{model}: general abilities (seed {seed}, {wall:.0f}s wall, {torch.get_num_threads()} threads)")
    for col in ("task", "n", "accuracy", "f1", "mcc", "chance", "version", "seconds"):
        t.add_column(col, justify="left" if col == "task" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, r in res.items():
        t.add_row(name, str(r["n"]), fmt(r["accuracy"]), fmt(r.get("f1")), fmt(r.get("mcc")),
                  fmt(r.get("majority")), str(r["version"]), f"{r['seconds']:.1f}")
    _console.print(t)
    _console.print("chance = share of the most frequent gold label in the sample; gsm8k = exact match of the final number")
