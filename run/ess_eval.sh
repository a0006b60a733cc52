#!/bin/sh
# ESS inference (eval_openseg_pre_train.py): reads <exp_dir>/best.pth unless model_path is given, writes the adapted embeddings to ess_embedding_path (\${exp_root}/ess_embeddings) and its log and metrics to <exp_dir>.
# Works from any folder.
#   sh run/ess_eval.sh <exp_dir> <config> [key value | key=value ...]
#   sh run/ess_eval.sh exp/scannet/ess config/scannet/openseg_pre_eval.yaml
set -e
here=$(dirname "$0")
DRIVER=$0 SCRIPT=eval_openseg_pre_train.py WHAT="ESS inference (eval_openseg_pre_train.py): reads <exp_dir>/best.pth unless model_path is given, writes the adapted embeddings to ess_embedding_path (\${exp_root}/ess_embeddings) and its log and metrics to <exp_dir>."
EXAMPLE="exp/scannet/ess config/scannet/openseg_pre_eval.yaml"
. "${here}/usage.sh"
exp_dir=$1
config=$2
shift 2
exec sh "${here}/stage.sh" "${SCRIPT}" save_path "${exp_dir}" "${config}" "$@"
