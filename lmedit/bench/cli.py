"""`lmedit bench`: run, resume, report and compare benchmark runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(help="Benchmark runs: a method over a dataset under a declared protocol.",
                        no_args_is_help=True)
console = Console()


def _overrides(items: list[str]) -> dict:
    from ..hparams import parse_overrides

    try:
        return parse_overrides(items)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()] if s else []


@bench_app.command("run")
def run_cmd(
    out: Path = typer.Option(..., help="run directory (created; --resume continues it)"),
    model: str = typer.Option("smollm2-135m"),
    method: str = typer.Option("ft-m"),
    dataset: str = typer.Option("counterfact-edit", help="registered dataset (see `lmedit data list`)"),
    data_path: Optional[str] = typer.Option(None, help="your own file in the dataset's format"),
    start: int = typer.Option(0, help="first record"),
    n: Optional[int] = typer.Option(100, help="number of cases"),
    protocol: str = typer.Option("single", help="single | batch | sequential"),
    batch_size: int = typer.Option(1, help="requests per edit"),
    checkpoints: str = typer.Option("", help="sequential: also evaluate after these edit counts, e.g. 1,10,100"),
    set_: List[str] = typer.Option([], "--set", help="hparam override key=value (repeatable)"),
    hparams: Optional[str] = typer.Option(None, help="yaml file with hparams"),
    seed: int = 0,
    no_generation: bool = typer.Option(False, help="skip generation-based metrics"),
    max_new_tokens: int = typer.Option(24, help="new tokens per greedy generation (long answers: at least the target's)"),
    answers: Optional[str] = typer.Option(None, help="short | long: answers of a few words, or passages and chat "
                                                     "responses (default: the dataset's kind)"),
    no_cf_scores: bool = typer.Option(False, help="skip the CounterFact ES/PS/NS scores (target_true vs "
                                                   "target_new); saves ~40% of teacher-forced scoring on ZsRE"),
    general: str = typer.Option("", help="general-ability tasks, e.g. sst2,rte,mmlu"),
    general_n: int = typer.Option(50, help="examples per general-ability task"),
    skip_invalid: bool = typer.Option(False, help="skip malformed records (counted in the report)"),
    dtype: str = "float32",
    device: str = "cpu",
    workers: int = typer.Option(1, help="processes for single/batch protocols"),
    ray: Optional[str] = typer.Option(None, help="'auto' or a Ray address: shard over a Ray cluster"),
    resume: bool = typer.Option(False, help="continue an interrupted run in --out"),
    pre_from: Optional[str] = typer.Option(None, help="reuse the unedited model's observations from this run "
                                                      "directory (same model, data, scoring settings and batching)"),
    save_every: int = typer.Option(50, help="sequential: also save the edited weights every this many edits, "
                                            "so --resume loses at most that many (0: at checkpoints only)"),
):
    """Run a benchmark, e.g.

    lmedit bench run --out runs/ftm-cf --method ft-m --dataset counterfact-edit --n 100

    lmedit bench run --out runs/ftm-seq --method ft-m --dataset zsre-mend-eval --n 300 \\
        --protocol sequential --checkpoints 1,10,100 --general sst2,rte --general-n 50
    """
    from . import RunConfig, RunError, run

    overrides = _overrides(set_)
    try:
        cfg = RunConfig(model=model, method=method, dataset=dataset, data_path=data_path, start=start, n=n,
                        protocol=protocol, batch_size=batch_size, checkpoints=_ints(checkpoints), hparams=overrides,
                        hparams_file=hparams, seed=seed, generation=not no_generation, max_new_tokens=max_new_tokens,
                        answers=answers, cf_scores=not no_cf_scores,
                        general_tasks=[t for t in general.split(",") if t], general_n=general_n,
                        skip_invalid=skip_invalid, dtype=dtype, device=device, workers=workers, ray=ray,
                        pre_from=pre_from, save_every=save_every)
        summary = run(cfg, out, resume=resume)
    except (RunError, ValueError, KeyError) as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)
    console.print((out / "report.md").read_text().split("## Plots")[0].split("## Metric definitions")[0])
    console.print(f"report: {out / 'report.md'}  summary: {out / 'summary.json'}  complete: {summary['complete']}")


@bench_app.command("report")
def report_cmd(run_dir: Path):
    """Rewrite summary.json, report.md and plots of a run directory (also of an unfinished run)."""
    from . import write_report

    write_report(run_dir)
    console.print((run_dir / "report.md").read_text())


@bench_app.command("table")
def table_cmd(run_dirs: List[Path]):
    """KnowEdit-style Markdown tables (scores x 100; fluency as entropy), one per model and dataset:

    lmedit bench table runs/*-knowedit-zsre
    """
    from .report import table

    try:
        print(table(run_dirs))
    except ValueError as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)


@bench_app.command("compare")
def compare_cmd(run_dirs: List[Path], as_json: bool = typer.Option(False, "--json")):
    """Side-by-side post-edit scores of several runs."""
    from . import compare

    rows = compare(run_dirs)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table()
    for h in rows[0]:
        t.add_column(h)
    for r in rows[1:]:
        t.add_row(*r)
    console.print(t)


@bench_app.command("speed")
def speed_cmd(
    model: str = typer.Option("smollm2-135m", help="packaged model, folder, or a shape: gpt2-xl | llama3-8b | tiny-llama"),
    methods: str = typer.Option("rome,memit,alphaedit"),
    batch_sizes: str = typer.Option("1,10,100", help="batch sizes for batched methods"),
    rome_edits: int = typer.Option(5, help="single edits timed for one-at-a-time methods"),
    device: str = "cpu",
    dtype: str = "float32",
    stats_tokens: Optional[int] = typer.Option(None, help="override mom2_n_tokens"),
    set_: List[str] = typer.Option([], "--set", help="hparam override key=value (repeatable)"),
    output: Optional[Path] = typer.Option(None, help="write the rows as JSON here"),
):
    """Seconds per edit and peak memory, e.g.

    lmedit bench speed --model smollm2-135m --methods rome,memit,alphaedit --batch-sizes 1,10,100

    lmedit bench speed --model gpt2-xl --device cuda --methods memit --batch-sizes 1000
    """
    from .speed import markdown, measure

    overrides = _overrides(set_)
    rows = measure(model, [m for m in methods.split(",") if m], _ints(batch_sizes), rome_edits, device, dtype,
                   stats_tokens, overrides)
    if output:
        output.write_text(json.dumps([r.to_dict() for r in rows], indent=2))
    console.print(markdown(rows))
