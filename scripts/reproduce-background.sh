#!/usr/bin/env bash
# Run a reproduction suite in the background of a working session and commit its records as
# runs finish, so a later checkout continues where this one stopped:
#   scripts/reproduce-background.sh quick              # or a .toml path; extra arguments go to the suite:
#   scripts/reproduce-background.sh budget --jobs 2    # two runs at once, one thread each
# Records go to docs/results/<suite>/<dataset>/<run>.json (committed, every resolved setting in
# each); artifacts and checkpoints stay under $SLT_HOME/reproduce/<suite>. Niceness 10, so a
# session's own work comes first. Its log: $SLT_HOME/reproduce/<suite>.log.
set -euo pipefail
suite=${1:?usage: $0 SUITE [extra trainer reproduce args]}; shift
cd "$(dirname "$0")/.."
export SLT_HOME=${SLT_HOME:-$PWD/var}
name=$(basename "$suite" .toml)
mkdir -p "$SLT_HOME/reproduce"
log="$SLT_HOME/reproduce/$name.log"
nice -n 10 .venv/bin/python -m trainer reproduce --config "$suite" "$@" >>"$log" 2>&1 &
pid=$!
echo "suite $name: pid $pid, log $log"
commit() {
  git add "docs/results/$name" 2>/dev/null || return 0
  if ! git diff --cached --quiet -- "docs/results/$name"; then
    n=$(git diff --cached --name-only -- "docs/results/$name" | wc -l)
    git commit -q -m "reproduce $name: $n run records (background)" -- "docs/results/$name" || true
  fi
}
while kill -0 "$pid" 2>/dev/null; do
  sleep 300
  commit
done
rc=0; wait "$pid" || rc=$?
commit
# the suite's tables, plots and results JSON once it has finished
git add "docs/results/$name.json" "docs/results/$name.md" "docs/images/$name" 2>/dev/null &&
  git commit -q -m "reproduce $name: results" -- "docs/results/$name.json" "docs/results/$name.md" "docs/images/$name" || true
exit $rc
