#!/usr/bin/env bash
# Build a local Debian bookworm base image (Python 3.11 from Debian) with debootstrap and
# `docker import`, for hosts where no image registry can be reached (python:3.11-slim
# cannot be pulled). The result is a drop-in BASE_IMAGE for the project's Dockerfile:
#
#   docker/build-base-image.sh                  # -> slt-base:bookworm (skipped if it exists)
#   docker build --build-arg BASE_IMAGE=slt-base:bookworm ...
#
# The Debian mirror is read at run time from this host's apt sources (or $DEBIAN_MIRROR),
# so an air-gapped site uses its own mirror; nothing about a mirror is written in the repo.
#
# Environment:
#   BASE_TAG        image tag to create            (default slt-base:bookworm)
#   SUITE           Debian suite                   (default bookworm: ships python3.11)
#   DEBIAN_MIRROR   mirror URL                     (default: first host apt source serving $SUITE)
#   BASE_PACKAGES   extra packages, comma-separated (default: none; e.g. nodejs,npm)
#   FORCE=1         rebuild even if the tag exists
#   WORKDIR         scratch folder for the rootfs  (default: a temp dir under /var/tmp)
set -euo pipefail

BASE_TAG=${BASE_TAG:-slt-base:bookworm}
SUITE=${SUITE:-bookworm}
PACKAGES="python3,python3-venv,python3-pip,ca-certificates"
[ -n "${BASE_PACKAGES:-}" ] && PACKAGES="$PACKAGES,$BASE_PACKAGES"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  echo "base image: $BASE_TAG already exists (FORCE=1 rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }

# The host's apt sources: deb822 (*.sources) and one-line (*.list) formats. Take the first
# source whose suites include $SUITE itself (not -security / -updates).
host_mirror() {
  python3 - "$SUITE" <<'PY'
import glob, re, sys
suite = sys.argv[1]
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")) \
      + sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
for path in files:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.split()
            if (fields.get("enabled") or ["yes"])[0].lower() == "no":
                continue
            if "deb" in fields.get("types", []) and suite in fields.get("suites", []):
                print(fields["uris"][0]); sys.exit(0)
    else:
        for line in text.splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                print(parts[1]); sys.exit(0)
sys.exit(1)
PY
}

MIRROR=${DEBIAN_MIRROR:-$(host_mirror || true)}
[ -n "$MIRROR" ] || { echo "no apt source for '$SUITE' on this host: set DEBIAN_MIRROR" >&2; exit 1; }

WORK=${WORKDIR:-$(mktemp -d /var/tmp/slt-base.XXXXXX)}
ROOT="$WORK/rootfs"
cleanup() {
  # debootstrap mounts proc and sys inside the rootfs; never recurse into a live mount.
  for m in $(awk -v r="$ROOT" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m" || true; done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

t0=$(date +%s)
echo "base image: debootstrap $SUITE ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  echo "debootstrap failed; last lines:" >&2; tail -n 30 "$WORK/debootstrap.log" >&2
  tail -n 30 "$ROOT/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
  exit 1
}
# Slim it like the official slim images: no package caches, no docs, no apt lists.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/var/log/*.log "$ROOT"/tmp/* 2>/dev/null || true
# The rootfs gets the mirror it was built from, so `apt-get` inside works where that mirror does.
echo "deb $MIRROR $SUITE main" >"$ROOT/etc/apt/sources.list"

tar -C "$ROOT" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap $SUITE minbase + $PACKAGES" \
  - "$BASE_TAG" >/dev/null
echo "base image: $BASE_TAG built in $(( $(date +%s) - t0 )) s ($(docker image inspect -f '{{.Size}}' "$BASE_TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
docker run --rm "$BASE_TAG" python3 -c 'import sys, ssl, venv; print("python", sys.version.split()[0], "ok")'
