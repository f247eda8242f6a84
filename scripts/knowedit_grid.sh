#!/bin/bash
# The KnowEdit-style table of issue 5: every method on the six KnowEdit subsets (SmolLM2-135M) and on
# ZsRE + WikiData_counterfact (Qwen2.5-0.5B), single edits, N cases each. Every cell is its own run
# directory under $RUNS; a finished cell is skipped, an interrupted one resumes, so the grid can be
# filled over several sessions (or machines sharing $RUNS). The table is printed at the end:
#
#   bash scripts/knowedit_grid.sh                      # everything (days of CPU on 2 cores)
#   METHODS="ft-m rome" SUBSETS="zsre" bash scripts/knowedit_grid.sh
#   lmedit bench table docs/results/knowedit/*         # the table of what is finished so far
#
# A finished cell is also copied, without its per-case files, to $PUBLISH (config.json, summary.json,
# report.md, and the unedited model's observations pre*.jsonl when the cell made them): that folder is
# committed, so the table can be rebuilt from the repository and a fresh checkout skips finished cells.
#
# Several copies may run at once (one per core, or per machine sharing $RUNS): a cell being run
# by one copy is locked (flock, released when its process ends) and the others move on.
set -euo pipefail
LMEDIT=${LMEDIT:-.venv/bin/lmedit}
RUNS=${RUNS:-runs/knowedit}
PUBLISH=${PUBLISH:-docs/results/knowedit}
N=${N:-100}
WORKERS=${WORKERS:-1}
METHODS=${METHODS:-"ft-l ft-m rome r-rome memit pmet emmet alphaedit grace wise melo t-patcher lora ike memprompt serac"}
SUBSETS=${SUBSETS:-"zsre wiki-recent wiki-counterfact wikibio-test convsent-test sanitation-test"}
QWEN_SUBSETS=${QWEN_SUBSETS:-"zsre wiki-counterfact"}
MODELS=${MODELS:-"smollm2-135m qwen2.5-0.5b"}
export HF_HUB_OFFLINE=1

complete() { [ -f "$1/summary.json" ] && grep -q '"complete": true' "$1/summary.json"; }

publish() {  # run directory -> $PUBLISH/<same name>
  local dst="$PUBLISH/$(basename "$1")" tmp
  tmp="$dst.tmp$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  cp "$1/config.json" "$1/summary.json" "$1/report.md" "$tmp/"
  for f in "$1"/pre*.jsonl; do [ -s "$f" ] && cp "$f" "$tmp/"; done
  rm -rf "$dst" && mv "$tmp" "$dst"
}

pre_source() {  # model-subset -> a finished cell of it holding the unedited model's observations, or ""
  local d
  for d in "$PUBLISH/$1"-* "$RUNS/$1"-*; do
    if complete "$d" && ls "$d"/pre*.jsonl >/dev/null 2>&1; then echo "$d"; return; fi
  done
}

cell() {  # model subset method [run whose unedited-model observations to reuse]
  local name="$1-$2-$3" lock
  local out="$RUNS/$name"
  if complete "$PUBLISH/$name"; then return; fi
  if complete "$out"; then publish "$out"; return; fi
  mkdir -p "$RUNS/.locks"
  exec {lock}>"$RUNS/.locks/$name"
  if ! flock -n "$lock"; then exec {lock}>&-; return; fi
  local extra=""
  [ -f "$out/config.json" ] && extra="--resume"
  [ -n "${4:-}" ] && [ "$4" != "$out" ] && extra="$extra --pre-from $4"
  if "$LMEDIT" bench run --out "$out" --model "$1" --method "$3" --dataset "knowedit-$2" --n "$N" \
      --protocol single --workers "$WORKERS" $extra; then
    publish "$out"
  else
    echo "FAILED: $out" >&2
  fi
  exec {lock}>&-
}

for model in $MODELS; do
  subsets=$SUBSETS
  [ "$model" != smollm2-135m ] && subsets=$QWEN_SUBSETS
  for subset in $subsets; do
    # the unedited model is observed once per (model, subset): any finished cell that made the
    # observations itself (published or not) is the source for the others
    for method in $METHODS; do
      cell "$model" "$subset" "$method" "$(pre_source "$model-$subset")"
    done
  done
done
"$LMEDIT" bench table "$PUBLISH"/*
