#!/bin/bash
# The KnowEdit-style table of issue 5: every method on the six KnowEdit subsets (SmolLM2-135M) and on
# ZsRE + WikiData_counterfact (Qwen2.5-0.5B), single edits, N cases each. Every cell is its own run
# directory under $RUNS; a finished cell is skipped, an interrupted one resumes, so the grid can be
# filled over several sessions (or machines sharing $RUNS). The table is printed at the end:
#
#   bash scripts/knowedit_grid.sh                      # everything (days of CPU on 2 cores)
#   METHODS="ft-m rome" SUBSETS="zsre" bash scripts/knowedit_grid.sh
#   lmedit bench table runs/knowedit/*                 # the table of what is finished so far
#
# Several copies may run at once (one per core, or per machine sharing $RUNS): a cell being run
# by one copy is locked (flock, released when its process ends) and the others move on.
set -euo pipefail
LMEDIT=${LMEDIT:-.venv/bin/lmedit}
RUNS=${RUNS:-runs/knowedit}
N=${N:-100}
WORKERS=${WORKERS:-1}
METHODS=${METHODS:-"ft-l ft-m rome r-rome memit pmet emmet alphaedit grace wise melo t-patcher lora ike memprompt serac"}
SUBSETS=${SUBSETS:-"zsre wiki-recent wiki-counterfact wikibio-test convsent-test sanitation-test"}
QWEN_SUBSETS=${QWEN_SUBSETS:-"zsre wiki-counterfact"}
MODELS=${MODELS:-"smollm2-135m qwen2.5-0.5b"}
export HF_HUB_OFFLINE=1

cell() {  # model subset method [run whose unedited-model observations to reuse]
  local out="$RUNS/$1-$2-$3" lock
  if [ -f "$out/summary.json" ] && grep -q '"complete": true' "$out/summary.json"; then return; fi
  mkdir -p "$RUNS/.locks"
  exec {lock}>"$RUNS/.locks/$1-$2-$3"
  if ! flock -n "$lock"; then exec {lock}>&-; return; fi
  local extra=""
  [ -f "$out/config.json" ] && extra="--resume"
  [ -n "${4:-}" ] && [ "$4" != "$out" ] && extra="$extra --pre-from $4"
  "$LMEDIT" bench run --out "$out" --model "$1" --method "$3" --dataset "knowedit-$2" --n "$N" \
      --protocol single --workers "$WORKERS" $extra || echo "FAILED: $out" >&2
  exec {lock}>&-
}

for model in $MODELS; do
  subsets=$SUBSETS
  [ "$model" != smollm2-135m ] && subsets=$QWEN_SUBSETS
  for subset in $subsets; do
    # the unedited model is observed once per (model, subset): the first finished cell, the others reuse it
    pre=""
    for method in $METHODS; do
      cell "$model" "$subset" "$method" "$pre"
      done_run="$RUNS/$model-$subset-$method"
      [ -z "$pre" ] && [ -f "$done_run/summary.json" ] && pre="$done_run"
    done
  done
done
"$LMEDIT" bench table "$RUNS"/*
