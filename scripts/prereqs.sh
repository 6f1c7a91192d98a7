#!/usr/bin/env bash
# The system packages a make target needs, installed before anything runs (issue 24):
#   scripts/prereqs.sh test    Debian's chromium (the dashboard's end-to-end test drives it)
#   scripts/prereqs.sh bench   wrk (the HTTP section of the benchmarks)
# Each is installed with apt-get where apt-get exists and we are root (or `sudo -n` works);
# otherwise the script stops with one message naming the exact command to run, exit 1.
# SLT_CHROMIUM (default /usr/bin/chromium, the path the tests launch) and SLT_WRK (default:
# `wrk` on PATH) name the executables to look for.
set -euo pipefail

want=()
case "${1:-}" in
  test)  exe=${SLT_CHROMIUM:-/usr/bin/chromium}; pkg=chromium ;;
  bench) exe=${SLT_WRK:-wrk}; pkg=wrk ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
if [[ $exe == */* ]]; then [[ -x $exe ]] || want+=("$pkg"); else command -v "$exe" >/dev/null || want+=("$pkg"); fi
[[ ${#want[@]} -eq 0 ]] && exit 0

cmd="apt-get update && apt-get install -y ${want[*]}"
if command -v apt-get >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then as=(); elif sudo -n true 2>/dev/null; then as=(sudo -n); else as=(none); fi
  if [[ ${as[0]:-} != none ]]; then
    echo "installing ${want[*]} (needed by make $1): $cmd" >&2
    "${as[@]}" apt-get update -qq
    "${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
    if [[ $exe == */* ]]; then [[ -x $exe ]]; else command -v "$exe" >/dev/null; fi \
      || { echo "installed ${want[*]}, but $exe is still missing" >&2; exit 1; }
    exit 0
  fi
  echo "make $1 needs ${want[*]} ($exe is missing). Install it as root, then run make $1 again:" >&2
  echo "    sudo sh -c '$cmd'" >&2
else
  echo "make $1 needs ${want[*]} ($exe is missing) and this machine has no apt-get." >&2
  echo "Install the package ${want[*]} with your system's package manager (on Debian: sudo sh -c '$cmd')," >&2
  [[ $pkg == chromium ]] && echo "or point SLT_CHROMIUM at a Chromium executable." >&2
  [[ $pkg == wrk ]] && echo "or point SLT_WRK at a wrk executable." >&2
fi
exit 1
