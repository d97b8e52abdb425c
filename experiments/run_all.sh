#!/bin/sh
# Rerun the studies one after another, from the repository root:
#     sh experiments/run_all.sh                 # all five
#     sh experiments/run_all.sh 02_block_size   # some
# Order matters: studies 2-4 judge with study 1's AR model (experiments/01_ar_sanity/run/models/ar)
# and study 4 evaluates study 3's saved models of seed 0 (field "model" of its spec). Each study writes
# experiments/<study>/run/{results.json,results.md,*.png} (weights under run/models/ stay local);
# studies 2 and 3 run three training seeds: run/seed-S/ each, then run/seeds.md and run/seeds.png.
set -e
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONPATH="${PYTHONPATH:-$PWD}" DIFFUSIONLM_DATA="${DIFFUSIONLM_DATA:-$PWD/../shared/data}"
studies="${*:-01_ar_sanity 02_block_size 03_hybrid 04_sampling 05_lad}"
for s in $studies; do
  echo "$(date -u +%H:%M:%S) start $s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  python -m diffusionlm.cli compare --spec "experiments/$s/spec.json" > "experiments/$s/run.log" 2>&1
  echo "$(date -u +%H:%M:%S) done  $s"
done
