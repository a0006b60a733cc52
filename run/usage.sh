#!/bin/sh
# usage <driver> <what it runs> <example> "$@": print the driver's usage and exit when asked (-h / --help) or when
# fewer than two arguments are given. Sourced by the drivers.
usage() {
  echo "usage: sh $1 <exp_dir> <config.yaml> [key value | key=value ...]"
  echo "  $2"
  echo "  e.g. sh $1 $3"
  echo "  the config keys of this stage: python $4 --help"
}
case "${1:-}" in
  -h|--help) usage "$DRIVER" "$WHAT" "$EXAMPLE" "$SCRIPT"; exit 0 ;;
esac
if [ $# -lt 2 ]; then
  usage "$DRIVER" "$WHAT" "$EXAMPLE" "$SCRIPT" >&2
  exit 2
fi
