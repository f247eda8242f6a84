"""Sweep edit layers of a locate-then-edit method on CounterFact cases (single-edit mode).

    python scripts/sweep_layers.py rome 2 4 6 8 10 --n 20 [--n-tokens 100000] [--set v_steps=10]

Per layer (CounterFact scores, teacher-forced NLL comparisons): efficacy = fraction of cases with
P(target_new) > P(target_true) after the edited prompt; paraphrase = the same after the rephrase
prompt; neighbourhood = fraction whose locality prompt still prefers its true answer over
target_new. The unedited model's scores are printed first.
For multi-layer methods each given layer L is the last of a 5-layer window [L-4..L].
"""
import argparse
import json
import os
import time

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmedit import EditRequest, Editor, load_model  # noqa: E402
from lmedit.evaluate.scoring import teacher_forced  # noqa: E402
from lmedit.paths import shared_data_dir  # noqa: E402


def prefers(model, tok, prompts, a, b):
    sa, sb = teacher_forced(model, tok, prompts, a), teacher_forced(model, tok, prompts, b)
    return [x.nll < y.nll for x, y in zip(sa, sb)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("layers", type=int, nargs="+")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--n-tokens", type=int, default=100_000)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--set", action="append", default=[], help="hparam override key=value")
    args = ap.parse_args()
    model, tok = load_model(args.model)
    recs = json.loads((shared_data_dir() / "counterfact" / "easyedit_counterfact-edit.json").read_text())[:args.n]
    reqs = [EditRequest(prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"],
                        target_true=r["ground_truth"]) for r in recs]
    ed = Editor(model, tok)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: yaml.safe_load(v) for k, v in overrides.items()}

    def scores():
        eff = prefers(model, tok, [r.prompt for r in reqs], [r.target_new for r in reqs], [r.target_true for r in reqs])
        par = prefers(model, tok, [c["rephrase_prompt"] for c in recs], [r.target_new for r in reqs],
                      [r.target_true for r in reqs])
        nb = prefers(model, tok, [c["locality_prompt"] for c in recs], [c["locality_ground_truth"] for c in recs],
                     [r.target_new for r in reqs])
        return eff, par, nb

    e0, p0, n0 = scores()
    print(f"unedited: efficacy={sum(e0)/len(e0):.2f} paraphrase={sum(p0)/len(p0):.2f} "
          f"neighbourhood={sum(n0)/len(n0):.2f}", flush=True)
    for L in args.layers:
        layers = [L] if "rome" in args.method else list(range(max(0, L - 4), L + 1))
        eff, par, nb, secs = [], [], [], 0.0
        for r, rec in zip(reqs, recs):
            t0 = time.time()
            h = ed.apply([r], method=args.method,
                         hparams={"layers": layers, "mom2_n_tokens": args.n_tokens, **overrides})
            secs += time.time() - t0
            eff += prefers(model, tok, [r.prompt], [r.target_new], [r.target_true])
            par += prefers(model, tok, [rec["rephrase_prompt"]], [r.target_new], [r.target_true])
            nb += prefers(model, tok, [rec["locality_prompt"]], [rec["locality_ground_truth"]], [r.target_new])
            h.restore()
        print(f"{args.method} layers={layers} {overrides}: efficacy={sum(eff)/len(eff):.2f} "
              f"paraphrase={sum(par)/len(par):.2f} neighbourhood={sum(nb)/len(nb):.2f} "
              f"({secs/len(reqs):.1f} s/edit, first includes statistics)", flush=True)


if __name__ == "__main__":
    main()
