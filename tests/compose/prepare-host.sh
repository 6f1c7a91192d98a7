#!/usr/bin/env bash
# Host prerequisites of `make compose-test`: the Docker engine, a compose CLI and debootstrap
# (apt-get, only what is missing), and a running dockerd (docker/start-dockerd.sh: vfs).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker >/dev/null || need+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  # the Compose v2 plugin where the distribution has it, else Debian's docker-compose 1.29
  if apt-cache show docker-compose-plugin >/dev/null 2>&1; then need+=(docker-compose-plugin)
  else need+=(docker-compose); fi
fi
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "missing ${need[*]}; install them (needs root)" >&2; exit 1; }
  echo "host: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
docker/start-dockerd.sh
