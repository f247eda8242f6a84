#!/usr/bin/env bash
# Speed and memory of ROME, MEMIT and AlphaEdit on a GPU, with randomly initialised models of real shapes
# (GPT-2 XL, Llama-3-8B), for docs/BENCHMARKS.md. The GPU machine has no model hub and no ../shared, so
# what the runs read travels in .devcarry/ (ignored by git, about 10 MB): the SmolLM2 tokenizer (the
# stand-ins' token ids), the CounterFact requests and WikiText for the second-moment statistics.
#
#   bash scripts/gpu_speed.sh prepare          # here: fill .devcarry/ from the model cache and ../shared/data
#   bash scripts/gpu_speed.sh run [SET]        # there, in the repository root; SET = all (default) | memit1000
#
# Each step writes $OUT/<step>.json (the rows) and <step>.log; one step's failure does not stop the next.
set -u
CARRY=${CARRY:-.devcarry}
case "${1:-}" in
  prepare)
    set -e
    model=${LMEDIT_HOME:-$HOME/.cache/lmedit}/models/smollm2-135m
    data=${LMEDIT_DATA:-../shared/data}
    rm -rf "$CARRY" && mkdir -p "$CARRY/home/models/smollm2-135m" "$CARRY/data/counterfact" "$CARRY/data/wikitext"
    for f in "$model"/*; do [ "$(basename "$f")" = model.safetensors ] || cp "$f" "$CARRY/home/models/smollm2-135m/"; done
    cp "$data/counterfact/easyedit_counterfact-edit.json" "$CARRY/data/counterfact/"
    cp "$data"/wikitext/*.txt "$CARRY/data/wikitext/"
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    du -sh "$CARRY";;
  run)
    export LMEDIT_HOME=$PWD/$CARRY/home LMEDIT_DATA=$PWD/$CARRY/data HF_HUB_OFFLINE=1 PYTHONPATH=$PWD PYTHONUNBUFFERED=1 COLUMNS=200
    OUT=${OUT:-runs/gpu-speed}; mkdir -p "$OUT"
    step() {  # timeout name args...
      local t=$1 name=$2; shift 2; echo "== $name: $*"
      timeout "$t" python3 -m lmedit.cli bench speed --device cuda --output "$OUT/$name.json" "$@" 2>&1 \
        | tee "$OUT/$name.log" | tr '\r' '\n' | grep -v 'it/s\]$\|tok/s\]$\|^ *$' | tail -n 25
    }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    if [ "${2:-all}" = all ]; then
      step 260 gpt2xl-memit --model gpt2-xl --methods memit --batch-sizes 1,10,100
      step 100 gpt2xl-rome-alpha --model gpt2-xl --methods rome,alphaedit --batch-sizes 1,100 --rome-edits 5
      step 110 llama3-8b --model llama3-8b --dtype bfloat16 --methods rome,memit --batch-sizes 1,100 --rome-edits 3
    fi
    step 240 gpt2xl-memit1000 --model gpt2-xl --methods memit --batch-sizes 1000;;
  *) echo "usage: bash scripts/gpu_speed.sh prepare | run [all|memit1000]" >&2; exit 2;;
esac
