#!/bin/sh
# Evaluation of an ESG network (evaluate.py), as upstream's run/eval.sh: reads <exp_dir>/best.pth and
# writes predictions, PLY / PNG files and metrics to <exp_dir>/result_eval (a log beside them).
#   sh run/eval.sh <exp_dir> <config> [key value ...]
#   sh run/eval.sh exp/scannet/esg config/scannet/openseg_eval.yaml
#   sh run/eval.sh exp/scannet/esg config/scannet/openseg_eval.yaml model_path model_best.pth.tar test_repeats 1
# (later `key value` pairs win, so model_path / save_folder given here replace the defaults above)
set -ex

exp_dir=$1
config=$2
shift 2

result_dir="${exp_dir}/result_eval"
mkdir -p "${result_dir}"
[ "$(cd "$(dirname "${config}")" && pwd)" = "$(cd "${result_dir}" && pwd)" ] || cp "${config}" "${result_dir}/"

export PYTHONPATH=.
# tee keeps a timestamped log; the status file carries python's exit code through the pipe (plain sh has no pipefail)
status=$(mktemp)
{ rc=0; python -u evaluate.py --config "${config}" model_path "${exp_dir}/best.pth" save_folder "${result_dir}" "$@" 2>&1 \
    || rc=$?; echo "${rc}" > "${status}"; } | tee -a "${exp_dir}/eval-$(date +"%Y%m%d_%H%M").log"
rc=$(cat "${status}"); rm -f "${status}"
exit "${rc}"
