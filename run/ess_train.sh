#!/bin/sh
# ESS training (train_openseg_pre_train.py): checkpoints, log, TensorBoard files and the resolved config go to <exp_dir>.
# Works from any folder.
#   sh run/ess_train.sh <exp_dir> <config> [key value | key=value ...]
#   sh run/ess_train.sh exp/scannet/ess config/scannet/openseg_pre_train.yaml
#  sh run/ess_train.sh exp/scannet/ess config/scannet/openseg_pre_train.yaml resume exp/scannet/ess/last.pth
set -e
here=$(dirname "$0")
DRIVER=$0 SCRIPT=train_openseg_pre_train.py WHAT="ESS training (train_openseg_pre_train.py): checkpoints, log, TensorBoard files and the resolved config go to <exp_dir>."
EXAMPLE="exp/scannet/ess config/scannet/openseg_pre_train.yaml"
. "${here}/usage.sh"
exp_dir=$1
config=$2
shift 2
exec sh "${here}/stage.sh" "${SCRIPT}" save_path "${exp_dir}" "${config}" "$@"
