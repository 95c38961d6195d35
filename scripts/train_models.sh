#!/usr/bin/env bash
# Train, or continue training, the shipped models and ship them into the package.
# A run resumes from runs/NAME/state.pt when there is one (rerunning the script adds MINUTES more per model), and
# otherwise starts from the shipped weights (a warm start: see scripts/training-state/README.md).
#
#   scripts/train_models.sh [MINUTES_PER_MODEL] [NAME ...]     (default: 60 minutes, every config)
#
# Data: the real scans in ../shared/data (see each config's data_root and file lists).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-60}
shift || true
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(ct-denoise ct-sr4 ct-sr2 pet-denoise mri-denoise mri-sr2)
fi
for name in "${names[@]}"; do
  start=(--resume)
  [ -f "runs/$name/state.pt" ] || start=(--init-from "$name")
  sdenhance train --config "scripts/configs/$name.yaml" --output "runs/$name" "${start[@]}" \
    --time-budget "$minutes" --no-progress
  python scripts/ship_model.py "runs/$name"
done
