#!/usr/bin/env bash
# Regenerate every table and figure of the paper into figures/: the runs of experiments/*.yaml through
# the launcher, then nbs/tables.ipynb and nbs/figures.ipynb under papermill.
#
#   bash experiments/reproduce.sh                          # tiny scale: synthetic data on this machine's CPUs
#   JOBS=4 bash experiments/reproduce.sh                   # tiny scale, 4 runs at a time (default 2)
#   bash experiments/reproduce.sh full --cluster slurm     # paper scale: submits to SLURM and returns;
#                                                          # run it again when the jobs are done to draw
# Finished runs (a DONE marker in runs/...) are skipped, so a second call only redraws.
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-tiny}"; shift || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY="${PYTHON:-python}"
start=$(date +%s)
if [ "$scale" = "tiny" ]; then
  "$PY" -m scl_nb.launch experiments/*.yaml --cluster local --scale tiny --jobs "${JOBS:-2}" "$@" || echo "some runs failed or were blocked: see above; drawing what exists"
  scale_arg=tiny
else
  "$PY" -m scl_nb.launch experiments/*.yaml "$@" || echo "some runs failed or were blocked: see above"
  scale_arg=None
fi
"$PY" -m papermill nbs/tables.ipynb "runs/tables_${scale}.ipynb" -p scale "$scale_arg" --cwd . >/dev/null
"$PY" -m papermill nbs/figures.ipynb "runs/figures_${scale}.ipynb" -p scale "$scale_arg" --cwd . >/dev/null
echo "tables and figures in figures/ (index: figures/README.md); $(( $(date +%s) - start )) s in all"
