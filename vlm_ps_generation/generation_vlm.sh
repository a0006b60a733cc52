#!/bin/sh
# Pseudo-label generation (PLG), as upstream's generation_vlm.sh:
#   sh vlm_ps_generation/generation_vlm.sh <exp_dir> <config> [key value ...]
# makes <exp_dir>, keeps a copy of the config there, writes the pseudo labels into <exp_dir>
# and tees the log to <exp_dir>/plg-<date>.log. Run from the repository root.
set -eu
if [ $# -lt 2 ]; then
  echo "usage: $0 <exp_dir> <config> [key value ...]" >&2
  exit 2
fi
exp_dir=$1
config=$2
shift 2
mkdir -p "${exp_dir}"
# keep the config next to the results it produced (unless it already lives there)
[ "$(cd "$(dirname "${config}")" && pwd)" = "$(cd "${exp_dir}" && pwd)" ] || cp "${config}" "${exp_dir}/"
PYTHON=${PYTHON:-python}
export PYTHONPATH=.
log="${exp_dir}/plg-$(date +%Y%m%d_%H%M%S).log"
# a pipe would hide python's exit status from `sh`; keep it in a file
status_file=$(mktemp)
( "${PYTHON}" -u vlm_ps_generation/generation_vlm.py --config "${config}" save_folder "${exp_dir}" "$@" 2>&1; echo $? > "${status_file}" ) | tee -a "${log}"
status=$(cat "${status_file}"); rm -f "${status_file}"
exit "${status}"
