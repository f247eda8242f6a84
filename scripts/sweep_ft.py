"""Sweep FT-M/FT-L layer and steps on CounterFact edit-split facts (teacher-forced scores only).

    python scripts/sweep_ft.py --method ft-m --n 10 --layers 4 10 16 20 --steps 25 50
"""
import argparse
import json
import time

from lmedit import Editor, EvalConfig, load_model
from tests.conftest import counterfact_requests

ap = argparse.ArgumentParser()
ap.add_argument("--method", default="ft-m")
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--n", type=int, default=10)
ap.add_argument("--layers", type=int, nargs="+", default=[4, 10, 16, 20])
ap.add_argument("--steps", type=int, nargs="+", default=[25])
ap.add_argument("--lr", type=float, nargs="+", default=[5e-4])
ap.add_argument("--mode", default="batch")
ap.add_argument("--set", nargs="*", default=[], help="extra key=value hparams")
args = ap.parse_args()
model, tok = load_model(args.model)
editor = Editor(model, tok)
reqs = counterfact_requests(args.n)
extra = {k: float(v) if "." in v or "e" in v else int(v) for k, v in (s.split("=") for s in args.set)}
for layer in args.layers:
    for steps in args.steps:
        for lr in args.lr:
            t = time.time()
            res = editor.edit(reqs, method=args.method, mode=args.mode, eval_config=EvalConfig(generation=False),
                              hparams={"layers": [layer], "num_steps": steps, "lr": lr, **extra})
            res.restore()
            s = res.summary["post"]
            print(json.dumps({"method": args.method, "layer": layer, "steps": steps, "lr": lr, "mode": args.mode,
                              "n": args.n, **{k: round(v, 3) for k, v in s.items() if v is not None},
                              "edit_s": res.seconds, "wall_s": round(time.time() - t, 1)}), flush=True)
