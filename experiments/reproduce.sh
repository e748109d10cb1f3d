#!/usr/bin/env bash
# Regenerate every table and figure of the paper into figures/: the runs of experiments/*.yaml through
# the launcher, then nbs/tables.ipynb and nbs/figures.ipynb under papermill.
#
#   bash experiments/reproduce.sh                              # tiny scale: synthetic data on this machine's CPUs, one seed
#   bash experiments/reproduce.sh tiny-seeds                   # the objectives ablation over its seeds (0, 1, 2), then draw
#   bash experiments/reproduce.sh towers                       # that ablation from the pre-trained tiny towers, 3 seeds, with
#                                                              #   fine-tuned VQA / retrieval and ALIGN-BENCH, into figures/towers/
#   bash experiments/reproduce.sh realsmall                    # that ablation on the real-small corpus (data/real-small), 3 seeds,
#                                                              #   nominal weights into figures/real/, the official signal into
#                                                              #   figures/real/official/ (hours on 2 cores; resumable)
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
case "$scale" in tiny|tiny-seeds|towers|realsmall|full) ;; *) echo "error: unknown scale '$scale'; choose tiny (default), tiny-seeds, towers, realsmall or full" >&2; exit 2;; esac
if [ "$scale" = "realsmall" ] && [ ! -f data/real-small/captions.jsonl ]; then
  echo "error: no real-small corpus at data/real-small/captions.jsonl; build it once (about 8 minutes; its Debian packages:" >&2
  echo "README, 'Real pictures, human captions'), then run this again:" >&2
  echo "  .venv/bin/python -m scl_nb.realsmall --link data/real-small" >&2
  exit 2
fi
specs=(experiments/*.yaml); seeds=(--seeds 0)  # the one-seed suite; seeded specs keep only their seed-0 (plain) runs
if [ "$scale" = "tiny-seeds" ]; then scale=tiny; specs=(experiments/ablation_objectives.yaml); seeds=(); fi
if [ "$scale" = "towers" ] || [ "$scale" = "realsmall" ]; then specs=(experiments/ablation_objectives.yaml); seeds=(); fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
"$PY" -c "import scl_nb.tools.launch, papermill" || { echo "error: $PY cannot import scl_nb and papermill; install them (README) or set PYTHON" >&2; exit 2; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
start=$(date +%s); rc=0
draw() {  # draw(scale): the tables and figures of one scale's runs, into its folder
  local name=$1 arg=$1 out
  [ "$1" = None ] && name=full
  out=$("$PY" -c "import sys; from scl_nb.tools.figures_index import scale_folder; print(scale_folder(None if sys.argv[1] == 'None' else sys.argv[1]))" "$1")
  "$PY" -m papermill nbs/tables.ipynb "runs/tables_${name}.ipynb" -p scale "$arg" -p figures_dir "$out" --cwd . >/dev/null
  "$PY" -m papermill nbs/figures.ipynb "runs/figures_${name}.ipynb" -p scale "$arg" -p figures_dir "$out" --cwd . >/dev/null
  echo "tables and figures in $out/ (index: $out/README.md)"
}
if [ "$scale" = "tiny" ] || [ "$scale" = "towers" ] || [ "$scale" = "realsmall" ]; then
  export OMP_NUM_THREADS=1  # one thread per run; --jobs runs several at once
  launched=("$scale"); [ "$scale" = "realsmall" ] && launched=(realsmall realsmall-official)  # nominal weights, official signal
  for sc in "${launched[@]}"; do
    "$PY" -m scl_nb.tools.launch "${specs[@]}" --cluster local --scale "$sc" --jobs "${JOBS:-2}" ${seeds[@]+"${seeds[@]}"} ${@+"$@"} || rc=$?
    [ "$rc" -eq 2 ] && break
  done
else
  "$PY" -m scl_nb.tools.launch experiments/*.yaml ${@+"$@"} || rc=$?
  launched=(None)
  case " $* " in
    *" --cluster slurm "*) case " $* " in *" --wait "*) ;; *) echo "submitted; run this again with --wait (or once the jobs are done) to draw"; exit $rc;; esac;;
  esac
fi
[ "$rc" -eq 2 ] && { echo "error: bad spec or option (see above); nothing drawn" >&2; exit 2; }
[ "$rc" -ne 0 ] && echo "some runs failed or were blocked (see above); drawing what exists"
for sc in "${launched[@]}"; do draw "$sc"; done
echo "$(( $(date +%s) - start )) s in all"
exit $rc
