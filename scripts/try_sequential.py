"""T sequential edits (or one batch) of the first T cases of a dataset (default ZsRE eval); teacher-forced
reliability / generalization / locality after the last edit (no generation), plus seconds per edit.
For quick hyper-parameter checks.

    PYTHONPATH=. python scripts/try_sequential.py t-patcher 10 '{"lr": 0.05}'
    PYTHONPATH=. python scripts/try_sequential.py alphaedit 30 '{"prefixes": []}' zsre-mend-eval batch
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from lmedit import Editor, load_model  # noqa: E402
from lmedit.data import load_dataset  # noqa: E402
from lmedit.evaluate.evaluator import EvalConfig  # noqa: E402

method, n = sys.argv[1], int(sys.argv[2])
hp = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
dataset = sys.argv[4] if len(sys.argv) > 4 else "zsre-mend-eval"
mode = sys.argv[5] if len(sys.argv) > 5 else "sequential"
m, t = load_model("smollm2-135m")
reqs = list(load_dataset(dataset, limit=n))
t0 = time.time()
res = Editor(m, t).edit(reqs, method=method, hparams=hp, mode=mode,
                        eval_config=EvalConfig(generation=False, counterfact=False))
s = res.summary["post"]
print(method, mode, n, hp, " ".join(f"{k}={s[k]:.3f}" for k in ("tf_reliability", "tf_generalization", "tf_locality") if s.get(k) is not None),
      f"edit_s/edit={res.seconds / n:.2f} total={time.time() - t0:.0f}s", flush=True)
