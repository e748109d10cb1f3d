#!/usr/bin/env bash
# Regenerate every table and figure of the paper into figures/: the runs of experiments/*.yaml through
# the launcher, then nbs/tables.ipynb and nbs/figures.ipynb under papermill.
#
#   bash experiments/reproduce.sh                              # tiny scale: synthetic data on this machine's CPUs, one seed
#   bash experiments/reproduce.sh tiny-seeds                   # the objectives ablation over its seeds (0, 1, 2), then draw
#   bash experiments/reproduce.sh towers                       # that ablation from the pre-trained tiny towers, 3 seeds, with
#                                                              #   fine-tuned VQA / retrieval and ALIGN-BENCH, into figures/towers/
#   JOBS=4 bash experiments/reproduce.sh                       # tiny scale, 4 runs at a time (default 2)
#   bash experiments/reproduce.sh full --cluster slurm         # paper scale: submit to SLURM and return
#   bash experiments/reproduce.sh full --cluster slurm --wait  # ... wait for the jobs, then draw
#
# Finished runs (a DONE marker under runs/) are skipped, so a second call only redraws. Full-scale
# tables and figures go to figures/full/, so they never overwrite the committed tiny-scale ones.
# Exit status: 0 when every run finished, 1 when a run failed or was blocked (what exists is still
# drawn), 2 for a bad spec or option (nothing drawn).
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-tiny}"; [ $# -gt 0 ] && shift
case "$scale" in tiny|tiny-seeds|towers|full) ;; *) echo "error: unknown scale '$scale'; choose tiny (default), tiny-seeds, towers or full" >&2; exit 2;; esac
specs=(experiments/*.yaml); seeds=(--seeds 0)  # the one-seed suite; seeded specs keep only their seed-0 (plain) runs
if [ "$scale" = "tiny-seeds" ]; then scale=tiny; specs=(experiments/ablation_objectives.yaml); seeds=(); fi
if [ "$scale" = "towers" ]; then specs=(experiments/ablation_objectives.yaml); seeds=(); fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
"$PY" -c "import scl_nb.tools.launch, papermill" || { echo "error: $PY cannot import scl_nb and papermill; install them (README) or set PYTHON" >&2; exit 2; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
start=$(date +%s); rc=0
if [ "$scale" = "tiny" ] || [ "$scale" = "towers" ]; then
  export OMP_NUM_THREADS=1  # one thread per run; --jobs runs several at once
  "$PY" -m scl_nb.tools.launch "${specs[@]}" --cluster local --scale "$scale" --jobs "${JOBS:-2}" ${seeds[@]+"${seeds[@]}"} ${@+"$@"} || rc=$?
  scale_arg=$scale; out=figures; [ "$scale" = "towers" ] && out=figures/towers
else
  "$PY" -m scl_nb.tools.launch experiments/*.yaml ${@+"$@"} || rc=$?
  scale_arg=None; out=figures/full
  case " $* " in
    *" --cluster slurm "*) case " $* " in *" --wait "*) ;; *) echo "submitted; run this again with --wait (or once the jobs are done) to draw"; exit $rc;; esac;;
  esac
fi
[ "$rc" -eq 2 ] && { echo "error: bad spec or option (see above); nothing drawn" >&2; exit 2; }
[ "$rc" -ne 0 ] && echo "some runs failed or were blocked (see above); drawing what exists"
"$PY" -m papermill nbs/tables.ipynb "runs/tables_${scale}.ipynb" -p scale "$scale_arg" -p figures_dir "$out" --cwd . >/dev/null
"$PY" -m papermill nbs/figures.ipynb "runs/figures_${scale}.ipynb" -p scale "$scale_arg" -p figures_dir "$out" --cwd . >/dev/null
echo "tables and figures in $out/ (index: $out/README.md); $(( $(date +%s) - start )) s in all"
exit $rc
