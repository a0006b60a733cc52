#!/bin/sh
# Pseudo-label generation (PLG), as upstream's generation_vlm.sh: writes the pseudo labels into <exp_dir>,
# keeps a copy of the config and a timestamped log there. Run from the repository root:
#   sh vlm_ps_generation/generation_vlm.sh <exp_dir> <config> [key value ...]
#   sh vlm_ps_generation/generation_vlm.sh exp/scannet/plg vlm_ps_generation/config/scannet.yaml
set -e
if [ $# -lt 2 ]; then
  echo "usage: $0 <exp_dir> <config> [key value ...]" >&2
  exit 2
fi
exp_dir=$1
config=$2
shift 2
exec sh run/stage.sh plg "${exp_dir}" "${config}" \
  "${PYTHON:-python}" -u vlm_ps_generation/generation_vlm.py --config "${config}" save_folder "${exp_dir}" "$@"
