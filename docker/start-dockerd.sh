#!/usr/bin/env bash
# Make sure a Docker engine answers on this host; start one if none does.
#
# On hosts without systemd (CI sandboxes, VMs started from a container image) nothing starts
# dockerd for us. We start it in the background with the storage driver given by
# $DOCKERD_STORAGE_DRIVER (default: vfs, the one driver that works on every filesystem,
# including overlay-on-overlay; slow and disk-hungry, but always correct).
# Logs: $DOCKERD_LOG (default /var/log/dockerd.log).
set -euo pipefail

DRIVER=${DOCKERD_STORAGE_DRIVER:-vfs}
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
WAIT_S=${DOCKERD_WAIT_S:-60}

if docker info >/dev/null 2>&1; then
  echo "dockerd: already running ($(docker info --format '{{.ServerVersion}} / {{.Driver}}' 2>/dev/null))"
  exit 0
fi

command -v dockerd >/dev/null || { echo "dockerd: not installed (apt-get install docker.io)" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
  echo "dockerd: not running and starting it needs root; start it yourself (sudo $0)" >&2
  exit 1
fi

# A stale pid file from a killed daemon makes dockerd refuse to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid
fi

echo "dockerd: starting (--storage-driver=$DRIVER, log $LOG)"
mkdir -p "$(dirname "$LOG")"
nohup dockerd --storage-driver="$DRIVER" >>"$LOG" 2>&1 </dev/null &
echo $! >/var/run/slt-dockerd.pid

for _ in $(seq "$WAIT_S"); do
  if docker info >/dev/null 2>&1; then
    echo "dockerd: up (pid $(cat /var/run/slt-dockerd.pid))"
    exit 0
  fi
  sleep 1
done
echo "dockerd: did not answer within ${WAIT_S}s; last lines of $LOG:" >&2
tail -n 30 "$LOG" >&2
exit 1
