#!/usr/bin/env bash
# The system packages a make target needs, installed before anything runs (issue 24):
#   scripts/prereqs.sh test    Debian's chromium (the dashboard's end-to-end test drives it) and
#                              wrk (tests/bench checks the load generator's counts)
#   scripts/prereqs.sh bench   wrk (the HTTP section of the benchmarks)
# Each is installed with apt-get where apt-get exists and we are root (or `sudo -n` works);
# otherwise the script stops with one message naming the exact command to run, exit 1.
# SLT_CHROMIUM (default /usr/bin/chromium, the path the tests launch) and SLT_WRK (default:
# `wrk` on PATH) name the executables to look for.
set -euo pipefail

want=()
chromium=${SLT_CHROMIUM:-/usr/bin/chromium}
wrk=${SLT_WRK:-wrk}
case "${1:-}" in
  test)  need=("$chromium=chromium" "$wrk=wrk") ;;
  bench) need=("$wrk=wrk") ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
present() { if [[ $1 == */* ]]; then [[ -x $1 ]]; else command -v "$1" >/dev/null; fi; }
missing=()
for pair in "${need[@]}"; do
  exe=${pair%=*}; pkg=${pair##*=}
  present "$exe" || { want+=("$pkg"); missing+=("$exe"); }
done
[[ ${#want[@]} -eq 0 ]] && exit 0

cmd="apt-get update && apt-get install -y ${want[*]}"
if command -v apt-get >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then as=(); elif sudo -n true 2>/dev/null; then as=(sudo -n); else as=(none); fi
  if [[ ${as[0]:-} != none ]]; then
    echo "installing ${want[*]} (needed by make $1): $cmd" >&2
    "${as[@]}" apt-get update -qq
    "${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
    for exe in "${missing[@]}"; do
      present "$exe" || { echo "installed ${want[*]}, but $exe is still missing" >&2; exit 1; }
    done
    exit 0
  fi
  echo "make $1 needs ${want[*]} (${missing[*]} missing). Install it as root, then run make $1 again:" >&2
  echo "    sudo sh -c '$cmd'" >&2
else
  echo "make $1 needs ${want[*]} (${missing[*]} missing) and this machine has no apt-get." >&2
  echo "Install the package ${want[*]} with your system's package manager (on Debian: sudo sh -c '$cmd')," >&2
  [[ " ${want[*]} " == *" chromium "* ]] && echo "or point SLT_CHROMIUM at a Chromium executable." >&2
  [[ " ${want[*]} " == *" wrk "* ]] && echo "or point SLT_WRK at a wrk executable." >&2
fi
exit 1
