#!/usr/bin/env bash
# Submit the paper-style sweep of every dataset (all methods x budgets x 5 seeds) to SLURM.
#   RAFDB_ROOT=/data/RAF-DB/basic AFFECTNET_ROOT=/data/AffectNet FERPLUS_ROOT=/data/FERPlus \
#     bash slurm/submit_paper_sweep.sh --partition gpu
# Extra arguments go to every `ferbench sweep` call. Resubmitting submits only runs with neither a record
# nor a live job; follow progress with `ferbench status runs/<dataset>`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAFDB_ROOT:?set RAFDB_ROOT}" "${AFFECTNET_ROOT:?set AFFECTNET_ROOT}" "${FERPLUS_ROOT:?set FERPLUS_ROOT}"
ferbench sweep slurm/specs/paper_rafdb.yaml --executor slurm "$@" data.root="$RAFDB_ROOT"
ferbench sweep slurm/specs/paper_affectnet.yaml --executor slurm "$@" data.root="$AFFECTNET_ROOT"
ferbench sweep slurm/specs/paper_affectnet.yaml --executor slurm "$@" data.root="$AFFECTNET_ROOT" \
  data.name=affectnet8 output_dir=runs/affectnet8
ferbench sweep slurm/specs/paper_ferplus.yaml --executor slurm "$@" data.root="$FERPLUS_ROOT"
