"""Where AlphaEdit's updates live, for a sequential AlphaEdit run that saved its edited weights.

    PYTHONPATH=. python scripts/alphaedit_nullspace.py runs/alphaedit-zsre1000-b100 [N_KEYS [THRESHOLDS]]

Per edited layer, from the run's own hparams and statistics C = E[k kᵀ] (no corpus pass needed):
  r             dimension of the null space (eigenvalues of C below the threshold), of d_in
  pres_null     share of the preserved keys' energy inside the null space, tr(UᵀCU) / tr(C)
  edit_null     share of the edited subjects' key energy inside it, mean ‖Uᵀk‖² / ‖k‖² over the first
                N_KEYS cases of the run's dataset (bare prompt, subject's last token)
  dW/W          ‖ΔW‖_F / ‖W‖_F of the saved state against the unedited model
  out_change    how much the update moves the layer's output on preserved keys, relative to the
                output itself: sqrt(tr(ΔW C ΔWᵀ) / tr(W C Wᵀ))
THRESHOLDS (comma-separated, e.g. 1e-2,3e-3,1e-3) adds r, pres_null and edit_null for other thresholds.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from lmedit import load_model  # noqa: E402
from lmedit.data import load_dataset  # noqa: E402
from lmedit.methods import locate  # noqa: E402
from lmedit.methods.closed_form import nullspace_basis  # noqa: E402
from lmedit.models.adapters import ModelAdapter  # noqa: E402

run_dir = Path(sys.argv[1])
n_keys = int(sys.argv[2]) if len(sys.argv) > 2 else 100
thresholds = [float(t) for t in sys.argv[3].split(",")] if len(sys.argv) > 3 else []
saved = json.loads((run_dir / "config.json").read_text())
cfg, hp = saved["config"], saved["hparams"]
state = json.loads((run_dir / "state" / "state.json").read_text())
model, tok = load_model(cfg["model"])
adapter = ModelAdapter(model)
layers = hp["layers"]
C = locate.cached_second_moments(model, tok, adapter, layers, n_tokens=hp["mom2_n_tokens"], corpus=hp["mom2_corpus"])
reqs = list(load_dataset(cfg["dataset"], limit=n_keys))
keys = locate.compute_keys(model, tok, adapter, reqs, layers, prefixes=[]).bare
edited = load_file(str(run_dir / "state" / "weights.safetensors"))
print(f"{run_dir}: {cfg['method']} after {state['edits_done']} edits (batch {cfg['batch_size']}), "
      f"threshold {hp['nullspace_threshold']}{' relative' if hp['nullspace_relative'] else ''}")
print("| layer | r / d_in | pres_null | edit_null | dW/W | out_change |")
print("| --- | --- | --- | --- | --- | --- |")
for l in layers:
    c = C[l].double()
    U = nullspace_basis(c, hp["nullspace_threshold"], hp["nullspace_relative"])
    name = adapter.param_name(adapter.mlp_out_path(l))
    W = adapter.as_out_in(dict(model.named_parameters())[name].detach()).double()
    dW = adapter.as_out_in(edited[name]).double() - W
    k = keys[l].double()  # (n, d_in)
    edit_null = ((k @ U).pow(2).sum(1) / k.pow(2).sum(1)).mean()
    pres_null = torch.trace(U.T @ c @ U) / torch.trace(c)
    out_change = (torch.trace(dW @ c @ dW.T) / torch.trace(W @ c @ W.T)).sqrt()
    print(f"| {l} | {U.shape[1]} / {c.shape[0]} | {pres_null:.4f} | {edit_null:.4f} | "
          f"{dW.norm() / W.norm():.3f} | {out_change:.3f} |")

if thresholds:
    print("\n| layer | threshold | r / d_in | pres_null | edit_null |")
    print("| --- | --- | --- | --- | --- |")
    for l in layers:
        c, k = C[l].double(), keys[l].double()
        for t in thresholds:
            U = nullspace_basis(c, t, hp["nullspace_relative"])
            pres = float(torch.trace(U.T @ c @ U) / torch.trace(c)) if U.shape[1] else 0.0
            edit = float(((k @ U).pow(2).sum(1) / k.pow(2).sum(1)).mean()) if U.shape[1] else 0.0
            print(f"| {l} | {t:g} | {U.shape[1]} / {c.shape[0]} | {pres:.4f} | {edit:.4f} |")
