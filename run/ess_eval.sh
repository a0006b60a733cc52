#!/bin/sh
# ESS inference (eval_openseg_pre_train.py): reads <exp_dir>/best.pth unless model_path is given,
# writes the adapted embeddings to ess_embedding_path (from the config) and logs to <exp_dir>.
#   sh run/ess_eval.sh <exp_dir> <config> [key value ...]
#   sh run/ess_eval.sh exp/scannet/ess config/scannet/openseg_pre_eval.yaml
set -e
exp_dir=$1
config=$2
shift 2
exec sh run/stage.sh ess_eval "${exp_dir}" "${config}" \
  "${PYTHON:-python}" -u eval_openseg_pre_train.py --config "${config}" save_path "${exp_dir}" "$@"
