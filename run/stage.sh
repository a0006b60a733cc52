#!/bin/sh
# Shared body of the stage drivers (run/*.sh, vlm_ps_generation/generation_vlm.sh), as upstream's drivers:
# make the experiment folder, keep a copy of the config there, run the stage, tee a timestamped log there.
#   sh run/stage.sh <log_name> <exp_dir> <config> <command ...>
# <command ...> (the stage's full command line) runs with PYTHONPATH=. from the repository root; the stage's
# exit code is the driver's (plain sh has no pipefail, so a file carries it through the pipe into tee).
set -eu
log_name=$1
exp_dir=$2
config=$3
shift 3

mkdir -p "${exp_dir}"
[ "$(cd "$(dirname "${config}")" && pwd)" = "$(cd "${exp_dir}" && pwd)" ] || cp "${config}" "${exp_dir}/"
export PYTHONPATH=.
log="${exp_dir}/${log_name}-$(date +%Y%m%d_%H%M%S).log"
status=$(mktemp)
{ rc=0; "$@" 2>&1 || rc=$?; echo "${rc}" > "${status}"; } | tee -a "${log}"
rc=$(cat "${status}"); rm -f "${status}"
exit "${rc}"
