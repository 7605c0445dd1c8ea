#!/usr/bin/env bash
# Submit every dataset's sweeps to SLURM: the paper sweeps (each method under its own reference recipe, from the
# papers' checkpoints) and the harness-protocol sweeps (all methods on one substrate and one checkpoint).
#   RAFDB_ROOT=/data/RAF-DB/basic AFFECTNET_ROOT=/data/AffectNet FERPLUS_ROOT=/data/FERPlus \
#   MSCELEB_RESNET18=/weights/resnet18_msceleb.pth SSFER_MAE=/weights/125w_base_warmup50_batch256_600.pth \
#     bash slurm/submit_paper_sweep.sh --partition gpu
# Extra arguments go to every `ferbench sweep` call. Every cell is checked before anything is submitted;
# resubmitting submits only runs with neither a record nor a live job (`ferbench status runs/<sweep>`).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAFDB_ROOT:?set RAFDB_ROOT}" "${AFFECTNET_ROOT:?set AFFECTNET_ROOT}" "${FERPLUS_ROOT:?set FERPLUS_ROOT}"
: "${MSCELEB_RESNET18:?set MSCELEB_RESNET18}" "${SSFER_MAE:?set SSFER_MAE}"
weights=(model.pretrained_file="$MSCELEB_RESNET18")
mae=frpretrain:method_args.pretrain_checkpoint="$SSFER_MAE"
ferbench sweep slurm/specs/paper_rafdb.yaml --executor slurm "$@" data.root="$RAFDB_ROOT" "${weights[@]}" "$mae"
ferbench sweep slurm/specs/paper_ferplus.yaml --executor slurm "$@" data.root="$FERPLUS_ROOT" "${weights[@]}" "$mae"
ferbench sweep slurm/specs/paper_affectnet7.yaml --executor slurm "$@" data.root="$AFFECTNET_ROOT" "${weights[@]}" "$mae"
ferbench sweep slurm/specs/paper_affectnet8.yaml --executor slurm "$@" data.root="$AFFECTNET_ROOT" "${weights[@]}" "$mae"
ferbench sweep slurm/specs/harness_rafdb.yaml --executor slurm "$@" data.root="$RAFDB_ROOT" "${weights[@]}"
ferbench sweep slurm/specs/harness_ferplus.yaml --executor slurm "$@" data.root="$FERPLUS_ROOT" "${weights[@]}"
ferbench sweep slurm/specs/harness_affectnet.yaml --executor slurm "$@" data.root="$AFFECTNET_ROOT" "${weights[@]}"
ferbench sweep slurm/specs/harness_affectnet.yaml --executor slurm "$@" data.root="$AFFECTNET_ROOT" "${weights[@]}" \
  data.name=affectnet8 output_dir=runs/affectnet8
