"""One batched edit of the first N CounterFact cases; efficacy / paraphrase / neighbourhood as in sweep_layers.

    PYTHONPATH=. python scripts/try_batch.py memit 10 '{"v_steps": 15}'
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))
from sweep_layers import prefers  # noqa: E402
from lmedit import Editor, EditRequest, load_model  # noqa: E402
m,t=load_model("smollm2-135m"); ed=Editor(m,t)
n=int(sys.argv[2]); recs=json.load(open('/work/shared/data/counterfact/easyedit_counterfact-edit.json'))[:n]
reqs=[EditRequest(prompt=r["prompt"],subject=r["subject"],target_new=r["target_new"],target_true=r["ground_truth"]) for r in recs]
hp=json.loads(sys.argv[3]) if len(sys.argv)>3 else {}
t0=time.time(); h=ed.apply(reqs,method=sys.argv[1],hparams=hp); dt=time.time()-t0
eff=prefers(m,t,[r.prompt for r in reqs],[r.target_new for r in reqs],[r.target_true for r in reqs])
par=prefers(m,t,[c["rephrase_prompt"] for c in recs],[r.target_new for r in reqs],[r.target_true for r in reqs])
nb=prefers(m,t,[c["locality_prompt"] for c in recs],[c["locality_ground_truth"] for c in recs],[r.target_new for r in reqs])
print(sys.argv[1], hp, f"eff={sum(eff)/n:.2f} par={sum(par)/n:.2f} nb={sum(nb)/n:.2f} time={dt:.1f}s", flush=True)
