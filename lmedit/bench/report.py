"""summary.json, report.md and plots of a run directory; `compare` for several runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..evaluate.evaluator import METRIC_DOCS, summarize
from .run import case_rows, read_jsonl, write_json_atomic

FAMILIES = {
    "teacher-forced (EasyEdit)": ["tf_reliability", "tf_generalization", "tf_locality", "tf_portability"],
    "CounterFact (ROME/MEMIT)": ["cf_es", "cf_ps", "cf_ns", "cf_score", "cf_em", "cf_pm", "cf_nm"],
    "generation-based (WILD-style)": ["gen_reliability", "gen_generalization", "gen_locality", "gen_portability"],
    "fluency": ["fluency"],
    "sentiment (ConvSent)": ["sent_es"],
}


def summarize_run(run_dir: Path) -> dict[str, Any]:
    cfg = json.loads((run_dir / "config.json").read_text())
    rows = case_rows(run_dir)
    expected = cfg["dataset"]["cases"]
    summary = {
        "config": cfg["config"], "hparams": cfg["hparams"], "dataset": cfg["dataset"],
        "environment": cfg["environment"], "cases_done": len(rows), "complete": len(rows) == expected,
        "pre": summarize([r["pre"] for r in rows]) if rows else {},
        "post": summarize([r["post"] for r in rows]) if rows else {},
        "edit_seconds_per_case": (sum(r["edit_seconds"] for r in rows) / len(rows)) if rows else None,
        "checkpoints": read_jsonl(run_dir / "checkpoints.jsonl"),
        "general": read_jsonl(run_dir / "general.jsonl"),
    }
    cc = read_jsonl(run_dir / "checkpoint_cases.jsonl")
    summary["retention"] = {m: retention(cc, m) for m in ("tf_reliability", "gen_reliability")} if cc else {}
    return summary


def retention(checkpoint_cases: Sequence[dict[str, Any]], metric: str = "tf_reliability") -> list[dict[str, Any]]:
    """Forgetting by cohort: the edits made between two checkpoints form a cohort; its mean `metric` at
    its own checkpoint and at every later one. Rows: {"cohort": [first, last] edit numbers (1-based),
    "at": [edits...], "score": [...]}."""
    rows = sorted(checkpoint_cases, key=lambda r: r["edits"])
    out, prev = [], 0
    for cp in rows:
        members = [str(i) for i in range(prev, cp["edits"])]
        at, score = [], []
        for later in rows:
            if later["edits"] < cp["edits"]:
                continue
            vals = [later["scores"][m].get(metric) for m in members if m in later["scores"]]
            vals = [v for v in vals if v is not None]
            if vals:
                at.append(later["edits"])
                score.append(sum(vals) / len(vals))
        if at:
            out.append({"cohort": [prev + 1, cp["edits"]], "at": at, "score": score})
        prev = cp["edits"]
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _plots(run_dir: Path, s: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    cps = s["checkpoints"]
    if cps:
        for fam, keys in FAMILIES.items():
            keys = [k for k in keys if any(c["summary"].get(k) is not None for c in cps) and k != "fluency"
                    and not k.endswith(("_em", "_pm", "_nm"))]
            if not keys:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for k in keys:
                ax.plot([c["edits"] for c in cps], [c["summary"].get(k) for c in cps], marker="o", label=k)
            ax.set_xscale("log")
            ax.set_xlabel("number of edits (sequential)")
            ax.set_ylabel("score over edits so far")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{s['config']['method']} on {s['config']['dataset']}: {fam}")
            ax.legend(fontsize=8)
            name = "forgetting_" + fam.split()[0].replace("-", "_").lower() + ".png"
            fig.tight_layout()
            fig.savefig(plots / name, dpi=100)
            plt.close(fig)
            made.append(f"plots/{name}")
    for metric, cohorts in s.get("retention", {}).items():
        if not any(len(c["at"]) > 1 for c in cohorts):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in cohorts:
            ax.plot(c["at"], c["score"], marker="o", label=f"edits {c['cohort'][0]}-{c['cohort'][1]}")
        ax.set_xscale("log")
        ax.set_xlabel("number of edits made (sequential)")
        ax.set_ylabel(f"{metric} of the cohort")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{s['config']['method']}: how earlier edits hold up ({metric})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"retention_{metric}.png"
        fig.savefig(plots / name, dpi=100)
        plt.close(fig)
        made.append(f"plots/{name}")
    gen = s["general"]
    if len(gen) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        tasks = list(gen[0]["results"])
        for t in tasks:
            ax.plot([g["edits"] for g in gen], [g["results"][t].get("accuracy") for g in gen], marker="o", label=t)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("number of edits (sequential)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"general ability along {s['config']['method']} edits")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(plots / "general_ability.png", dpi=100)
        plt.close(fig)
        made.append("plots/general_ability.png")
    if s["post"] and not cps:
        keys = [k for k in s["post"] if s["post"][k] is not None and k != "fluency" and not k.endswith(("_em", "_pm", "_nm"))]
        fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.7), 4))
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [s["pre"].get(k) or 0 for k in keys], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [s["post"][k] for k in keys], width=0.4, label="after")
        ax.set_xticks(list(xs), keys, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{s['config']['method']} ({s['config']['protocol']}) on {s['config']['dataset']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plots / "scores.png", dpi=100)
        plt.close(fig)
        made.append("plots/scores.png")
    return made


def write_report(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    s = summarize_run(run_dir)
    plots = _plots(run_dir, s)
    s["plots"] = plots
    write_json_atomic(run_dir / "summary.json", s)
    c = s["config"]
    lines = [f"# {c['method']} on {c['model']}, {c['dataset']} ({c['protocol']})", "",
             f"- cases: {s['cases_done']} of {s['dataset']['cases']} (from record {c['start']}; "
             f"{s['dataset']['skipped']} invalid records skipped){'' if s['complete'] else ' **INCOMPLETE**'}",
             f"- protocol: {c['protocol']}, batch size {c['batch_size']}, seed {c['seed']}",
             f"- edit time per case: {_fmt(s['edit_seconds_per_case'])} s",
             f"- versions: " + ", ".join(f"{k} {v}" for k, v in s["environment"].items() if k != "platform"),
             f"- hparams: `{json.dumps(s['hparams'])}`", ""]
    lines += ["## Scores (mean over cases; after the last edit for sequential runs)", "",
              "| family | metric | before | after |", "| --- | --- | --- | --- |"]
    for fam, keys in FAMILIES.items():
        for k in keys:
            if s["post"].get(k) is not None:
                lines.append(f"| {fam} | {k} | {_fmt(s['pre'].get(k))} | {_fmt(s['post'][k])} |")
    if s["checkpoints"]:
        keys = [k for k in ("tf_reliability", "tf_generalization", "tf_locality", "cf_es", "cf_ns",
                            "gen_reliability", "gen_generalization", "gen_locality") if k in s["checkpoints"][-1]["summary"]]
        lines += ["", "## Along the sequence (scores over all edits made so far)", "",
                  "| edits | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
        for cp in s["checkpoints"]:
            lines.append(f"| {cp['edits']} | " + " | ".join(_fmt(cp["summary"].get(k)) for k in keys) + " |")
    cohorts = s.get("retention", {}).get("tf_reliability", [])
    if any(len(co["at"]) > 1 for co in cohorts):
        ats = sorted({a for co in cohorts for a in co["at"]})
        lines += ["", "## Forgetting: tf_reliability of each cohort of edits as later edits arrive", "",
                  "| cohort (edits) | " + " | ".join(f"at {a}" for a in ats) + " |", "|" + " --- |" * (len(ats) + 1)]
        for co in cohorts:
            by = dict(zip(co["at"], co["score"]))
            lines.append(f"| {co['cohort'][0]}-{co['cohort'][1]} | " + " | ".join(_fmt(by.get(a)) for a in ats) + " |")
    if s["general"]:
        tasks = list(s["general"][0]["results"])
        lines += ["", f"## General ability (accuracy, {c['general_n']} examples per task)", "",
                  "| edits | " + " | ".join(tasks) + " |", "|" + " --- |" * (len(tasks) + 1)]
        for g in s["general"]:
            lines.append(f"| {g['edits']} | " + " | ".join(_fmt(g["results"][t].get("accuracy")) for t in tasks) + " |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Metric definitions", ""] + [f"- `{k}`: {v}" for k, v in METRIC_DOCS.items()]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return s


def compare(run_dirs: Sequence[str | Path]) -> list[list[str]]:
    """Rows of a side-by-side table: metric, then each run's post-edit score."""
    sums = []
    for d in run_dirs:
        f = Path(d) / "summary.json"
        sums.append(json.loads(f.read_text()) if f.is_file() else write_report(d))
    header = ["metric"] + [f"{s['config']['method']}/{s['config']['protocol']} ({Path(d).name})"
                           for s, d in zip(sums, run_dirs)]
    rows = [header, ["cases"] + [str(s["cases_done"]) for s in sums]]
    for keys in FAMILIES.values():
        for k in keys:
            if any(s["post"].get(k) is not None for s in sums):
                rows.append([k] + [_fmt(s["post"].get(k)) for s in sums])
    return rows


# KnowEdit-style columns (Zhang et al. 2024): teacher-forced Edit Succ. / Portability / Locality and
# Fluency, plus the generation-based reliability that shows what a user would see.
TABLE_COLUMNS = [("Edit Succ.", "tf_reliability"), ("Sentiment ES", "sent_es"), ("Generalization", "tf_generalization"),
                 ("Portability", "tf_portability"), ("Locality", "tf_locality"), ("Fluency", "fluency"),
                 ("Gen. reliability", "gen_reliability")]


def _table_values(scores: dict[str, Any], cols) -> list[str]:
    vals = []
    for _, k in cols:
        v = scores.get(k)
        vals.append("-" if v is None else (f"{v:.2f}" if k == "fluency" else f"{100 * v:.1f}"))
    return vals


def table(run_dirs: Sequence[str | Path]) -> str:
    """Markdown: one table per (model, dataset), one row per run (method, protocol, cases), after a first
    row with the unedited model's scores (from the first finished run of the group)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in run_dirs:
        if not (Path(d) / "config.json").is_file():
            raise ValueError(f"{d} is not a run directory (no config.json)")
        f = Path(d) / "summary.json"
        s = json.loads(f.read_text()) if f.is_file() else write_report(d)
        groups.setdefault((s["config"]["model"], s["config"]["dataset"]), []).append(s)
    out = []
    for (model, dataset), sums in groups.items():
        cols = [(h, k) for h, k in TABLE_COLUMNS if any(s["post"].get(k) is not None for s in sums)]
        out += [f"### {dataset} on {model}", "",
                "| method | protocol | cases | " + " | ".join(h for h, _ in cols) + " |",
                "|" + " --- |" * (len(cols) + 3)]
        base = next((s for s in sums if s["complete"]), sums[0])
        out.append(f"| (unedited) | - | {base['cases_done']} | " + " | ".join(_table_values(base["pre"], cols)) + " |")
        for s in sums:
            c = s["config"]
            proto = c["protocol"] + (f" (B={c['batch_size']})" if c["protocol"] != "single" else "")
            cases = f"{s['cases_done']}" + ("" if s["complete"] else f" of {s['dataset']['cases']}")
            out.append(f"| {c['method']} | {proto} | {cases} | " + " | ".join(_table_values(s["post"], cols)) + " |")
        out.append("")
    return "\n".join(out)
