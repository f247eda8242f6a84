"""One batched edit of the first N CounterFact cases; efficacy / paraphrase / neighbourhood as in sweep_layers.

    PYTHONPATH=. python scripts/try_batch.py memit 10 '{"v_steps": 15}'
    PYTHONPATH=. python scripts/try_batch.py memit 20 '{"layers": [1, 2, 3, 4, 5]}' --model qwen2.5-0.5b

The hparams are the method's packaged defaults for the model's family plus the JSON overrides.
The unedited model's scores are printed first.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from sweep_layers import prefers  # noqa: E402
from lmedit import Editor, EditRequest, load_model  # noqa: E402
from lmedit.paths import shared_data_dir  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("n", type=int)
    ap.add_argument("hparams", nargs="?", default="{}", help="JSON object of hparam overrides")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    model, tok = load_model(args.model)
    ed = Editor(model, tok)
    recs = json.loads((shared_data_dir() / "counterfact" / "easyedit_counterfact-edit.json").read_text())[:args.n]
    reqs = [EditRequest(prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"],
                        target_true=r["ground_truth"]) for r in recs]
    hp = json.loads(args.hparams)

    def scores():
        news, trues = [r.target_new for r in reqs], [r.target_true for r in reqs]
        eff = prefers(model, tok, [r.prompt for r in reqs], news, trues)
        par = prefers(model, tok, [c["rephrase_prompt"] for c in recs], news, trues)
        nb = prefers(model, tok, [c["locality_prompt"] for c in recs], [c["locality_ground_truth"] for c in recs], news)
        return f"eff={sum(eff) / args.n:.2f} par={sum(par) / args.n:.2f} nb={sum(nb) / args.n:.2f}"

    print(f"unedited {args.model}: {scores()}", flush=True)
    t0 = time.time()
    ed.apply(reqs, method=args.method, hparams=hp)
    print(args.model, args.method, hp, scores(), f"time={time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
