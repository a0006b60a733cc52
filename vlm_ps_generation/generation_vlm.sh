#!/bin/sh
# Pseudo-label generation (PLG), as upstream's generation_vlm.sh: pseudo labels, summary, log and the resolved
# config go to <exp_dir>. Works from any folder.
#   sh vlm_ps_generation/generation_vlm.sh <exp_dir> <config> [key value | key=value ...]
#   sh vlm_ps_generation/generation_vlm.sh exp/scannet/plg vlm_ps_generation/config/scannet.yaml
set -e
here=$(dirname "$0")
DRIVER=$0 SCRIPT=vlm_ps_generation/generation_vlm.py WHAT="PLG: pseudo labels of a split into <exp_dir>"
EXAMPLE="exp/scannet/plg vlm_ps_generation/config/scannet.yaml"
. "${here}/../run/usage.sh"
exp_dir=$1
config=$2
shift 2
exec sh "${here}/../run/stage.sh" "${SCRIPT}" save_folder "${exp_dir}" "${config}" "$@"
