#!/usr/bin/env bash
# Commit newly published KnowEdit grid cells together with the regenerated BENCHMARKS.md tables.
set -euo pipefail
cd "$(dirname "$0")/.."
new=$(git status --porcelain docs/results/knowedit | awk '{print $2}' | xargs -r -n1 basename | sort -u | tr '\n' ' ')
[ -n "$new" ] || { echo "no new cells"; exit 0; }
.venv/bin/python scripts/knowedit_tables.py
git add docs/results/knowedit docs/BENCHMARKS.md
git commit -qm "KnowEdit grid: ${new% }; tables regenerated"
echo "committed: $new"
