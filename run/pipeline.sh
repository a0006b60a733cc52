#!/bin/sh
# One experiment, every stage: PLG -> ESS train -> ESS inference -> ESG train -> evaluation into exp/<dataset>/<experiment>/,
# resumable (a rerun continues where the last one stopped). Works from any folder.
#   sh run/pipeline.sh <dataset> <experiment> [key value | stage:key value ...]
#   sh run/pipeline.sh scannet baseline
#   sh run/pipeline.sh demo first_try esg:epochs 4
# stages: plg, ess, ess_eval, esg, eval; --from <stage> starts later; --dry-run prints the commands (run/experiment.py)
set -e
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$(dirname "${here}")${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python}" "${here}/experiment.py" "$@"
