#!/usr/bin/env bash
# The library's dependency graph points one way (docs/architecture.md): a file may include
# headers of its own folder and of folders below it, never above or beside it. Prints
# each offending include and exits 1; exit 0 when the graph holds.
set -euo pipefail
cd "$(dirname "$0")/.."
# folder -> layer; folders on one layer may not include each other.
declare -A layer=(
  [common]=0 [model]=1 [data]=2 [checkpoints]=2
  [trainer/dist]=3 [trainer/monitor]=3 [trainer/train]=4 [trainer/config]=5
  [trainer/eval]=6 [trainer/plan]=6 [trainer]=7 [trainer/cli]=8)
folder_of() {  # path of a file or header -> its folder key
  local d; d=$(dirname "$1")
  [ -n "${layer[$d]+x}" ] && echo "$d" || echo ""
}
bad=0
while IFS= read -r f; do
  from=$(folder_of "$f")
  [ -z "$from" ] && continue
  while IFS= read -r inc; do
    to=$(folder_of "$inc")
    [ -z "$to" ] || [ "$to" = "$from" ] && continue
    if [ "${layer[$to]}" -ge "${layer[$from]}" ]; then
      echo "$f includes $inc: $to is not below $from"
      bad=1
    fi
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
done < <(git ls-files 'common/*' 'model/*' 'data/*' 'checkpoints/*' 'trainer/*' | grep -E '\.(h|cpp)$')
[ $bad -eq 0 ] && echo "layers: every include points down"
exit $bad
