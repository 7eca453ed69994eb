#!/usr/bin/env bash
# Offline images for the local Docker hosts (there is no image registry here).
#
#   scripts/images.sh ensure HOST_URL [HOST_URL...]
#   scripts/images.sh controlplane HOST_URL [TAG]
#
# ensure: for each daemon, import hangar/python-base:bookworm if missing (a
# debootstrap'd Debian bookworm minbase with python3, built once per machine and
# cached as a tarball), then build hangar/reference-agent:latest if missing or if
# its source (agents/reference/*) changed, from wheels downloaded once into the cache.
# controlplane: build the control plane's Dockerfile on that daemon from the same
# base (TAG, default hangar/controlplane:local), offline, with the wheels of
# pyproject.toml's dependencies downloaded once on this host; rebuilt only when
# the tree it copies changed (layers are cached too).
# Caches live in $HANGAR_CACHE (default /var/cache/hangar), outside the repo.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${HANGAR_CACHE:-/var/cache/hangar}
BASE_IMAGE=hangar/python-base:bookworm
AGENT_IMAGE=hangar/reference-agent:latest
AGENT_SRC=$REPO/agents/reference
ROOTFS_TAR=$CACHE/rootfs/python-base-bookworm.tar
WHEELS=$CACHE/wheels
HASH_LABEL=hangar.source-hash

die() { echo "images: $*" >&2; exit 1; }
usage() { sed -n '2,16s/^# \{0,1\}//p' "$0" >&2; exit 2; }

# Run a command quietly; show its output only if it fails.
quiet() {
  local out rc=0
  out=$(mktemp)
  "$@" >"$out" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then cat "$out" >&2; fi
  rm -f "$out"
  return $rc
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  quiet apt-get install -y -qq "$@" \
    || { quiet apt-get update -qq && quiet apt-get install -y -qq "$@"; } \
    || die "could not install $*"
}

# The Debian mirror this machine's apt uses for bookworm (never hard-coded).
debian_mirror() {
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '
      BEGIN { RS = ""; FS = "\n" }
      {
        uris = ""; suites = ""; types = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
          if ($i ~ /^Suites:/) { suites = " " $i " " }
          if ($i ~ /^Types:/) { types = " " $i " " }
        }
        if (types ~ /[ \t]deb[ \t]/ && suites ~ /[ \t]bookworm[ \t]/ && uris != "") {
          split(uris, u, /[ \t]+/); print u[1]; exit
        }
      }' "$f")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      uri=$(sed -nE 's/^deb[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+)[ \t]+bookworm[ \t].*/\2/p' "$f" | head -n1)
      [ -n "$uri" ] && break
    done
  fi
  [ -n "$uri" ] || die "no Debian bookworm mirror found in /etc/apt/sources.list{,.d/}"
  echo "$uri"
}

has_image() { docker -H "$1" image inspect "$2" >/dev/null 2>&1; }

# Build the base rootfs tarball once per machine (under the cache lock).
ensure_rootfs() {
  [ -s "$ROOTFS_TAR" ] && return
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local mirror dir t0
  mirror=$(debian_mirror)
  mkdir -p "$CACHE/rootfs"
  dir=$(mktemp -d "$CACHE/rootfs/build.XXXXXX")
  t0=$SECONDS
  if ! quiet debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$dir" "$mirror"; then
    rm -rf "$dir"; die "debootstrap failed (mirror $mirror)"
  fi
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/tmp/* \
    "$dir"/var/log/* 2>/dev/null || true
  tar -C "$dir" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  rm -rf "$dir"
  echo "base rootfs: debootstrap + tar in $((SECONDS - t0))s ($ROOTFS_TAR)"
}

import_base() {
  quiet docker -H "$1" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$ROOTFS_TAR" "$BASE_IMAGE" || die "docker import into $1 failed"
}

# The Python that matches the base image (Debian bookworm's python3) downloads wheels,
# so environment markers (e.g. python_full_version) resolve as they will in the image.
download_python() {
  if /usr/bin/python3 -m pip --version >/dev/null 2>&1; then
    echo /usr/bin/python3
  elif [ -x "$REPO/.venv/bin/python" ]; then
    echo "$REPO/.venv/bin/python"
  else
    die "no pip to download wheels with (install python3-pip or create .venv)"
  fi
}

ensure_wheels() {
  local want py
  want=$(sha256sum <"$AGENT_SRC/requirements.txt" | cut -d' ' -f1)
  [ "$(cat "$WHEELS/.requirements.sha256" 2>/dev/null)" = "$want" ] && return
  py=$(download_python)
  rm -rf "$WHEELS.tmp"; mkdir -p "$WHEELS.tmp"
  quiet "$py" -m pip download --disable-pip-version-check -q --only-binary=:all: \
    -d "$WHEELS.tmp" -r "$AGENT_SRC/requirements.txt" || die "downloading wheels failed"
  echo "$want" >"$WHEELS.tmp/.requirements.sha256"
  rm -rf "$WHEELS"; mv "$WHEELS.tmp" "$WHEELS"
}

source_hash() {
  (cd "$AGENT_SRC" && find . -type f ! -path './wheels/*' ! -name '*.pyc' ! -path '*/__pycache__/*' \
    -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

agent_hash_on() {
  docker -H "$1" image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$AGENT_IMAGE" \
    2>/dev/null || true
}

build_agent() {
  local host=$1 hash=$2 ctx
  ensure_wheels
  ctx=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" RETURN
  (cd "$AGENT_SRC" && tar --exclude=./wheels --exclude='__pycache__' -cf - .) | tar -C "$ctx" -xf -
  mkdir -p "$ctx/wheels"
  cp "$WHEELS"/*.whl "$ctx/wheels/"
  DOCKER_BUILDKIT=0 quiet docker -H "$host" build --network host --force-rm \
    --label "$HASH_LABEL=$hash" -t "$AGENT_IMAGE" -t "hangar/reference-agent:$hash" "$ctx" \
    || die "building $AGENT_IMAGE on $host failed"
  # Drop tags of earlier source hashes (kept while a container still uses them).
  docker -H "$host" images --format '{{.Repository}}:{{.Tag}}' "${AGENT_IMAGE%:*}" \
    | grep -v -e ':latest$' -e ":$hash\$" \
    | while read -r old; do docker -H "$host" rmi "$old" >/dev/null 2>&1 || true; done \
    || true
}

ensure_host() {
  local host=$1 t0=$SECONDS base="present" agent="present" hash
  if ! has_image "$host" "$BASE_IMAGE"; then
    ensure_rootfs
    import_base "$host"
    base="imported"
  fi
  hash=$(source_hash)
  if [ "$(agent_hash_on "$host")" != "$hash" ]; then
    if [ -n "${BUILT_ON:-}" ] && [ "$(agent_hash_on "$BUILT_ON")" = "$hash" ]; then
      docker -H "$BUILT_ON" save "$AGENT_IMAGE" "hangar/reference-agent:$hash" \
        | quiet docker -H "$host" load || die "copying $AGENT_IMAGE to $host failed"
      agent="copied from $BUILT_ON"
    else
      build_agent "$host" "$hash"
      BUILT_ON=$host
      agent="built"
    fi
  fi
  echo "$host: images ready in $((SECONDS - t0))s (base $base, reference-agent $agent, source $hash)"
}

# The control plane image -------------------------------------------------------------
CP_WHEELS=$CACHE/controlplane-wheels
CP_SOURCES=(Dockerfile pyproject.toml manage.py controlplane deployments telemetry gateway edge edge_agent rollouts threads templates static
            offline-wheels)

# pyproject.toml's runtime dependencies plus what building the project needs.
cp_requirements() {
  "$REPO/.venv/bin/python" - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]
                + ["wheel"]))
PY
}

ensure_cp_wheels() {
  local want py reqs
  reqs=$(mktemp)
  cp_requirements >"$reqs"
  want=$(sha256sum <"$reqs" | cut -d' ' -f1)
  if [ "$(cat "$CP_WHEELS/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
    rm -f "$reqs"; return
  fi
  py=$(download_python)
  rm -rf "$CP_WHEELS.tmp"; mkdir -p "$CP_WHEELS.tmp"
  quiet "$py" -m pip download --disable-pip-version-check -q --only-binary=:all: \
    -d "$CP_WHEELS.tmp" -r "$reqs" || { rm -f "$reqs"; die "downloading wheels failed"; }
  rm -f "$reqs"
  echo "$want" >"$CP_WHEELS.tmp/.requirements.sha256"
  rm -rf "$CP_WHEELS"; mv "$CP_WHEELS.tmp" "$CP_WHEELS"
}

cp_source_hash() {
  (cd "$REPO" && find "${CP_SOURCES[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
    ! -name '*.whl' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

build_controlplane() {
  local host=$1 tag=${2:-hangar/controlplane:local} hash ctx t0=$SECONDS
  case "$host" in unix://* | tcp://* | ssh://*) ;; *) host="unix://$host" ;; esac
  has_image "$host" "$BASE_IMAGE" || { ensure_rootfs; import_base "$host"; }
  hash=$(cp_source_hash)
  if [ "$(docker -H "$host" image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" \
      "$tag" 2>/dev/null || true)" = "$hash" ]; then
    echo "$host: $tag up to date (source $hash)"; return
  fi
  ensure_cp_wheels
  ctx=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" RETURN
  (cd "$REPO" && tar --exclude='__pycache__' --exclude='*.pyc' --exclude='*.whl' -cf - \
    "${CP_SOURCES[@]}") | tar -C "$ctx" -xf -
  cp "$CP_WHEELS"/*.whl "$ctx/offline-wheels/"
  DOCKER_BUILDKIT=0 quiet docker -H "$host" build --network host --force-rm \
    --build-arg "BASE=$BASE_IMAGE" --build-arg "PIP_INDEX_OPTIONS=--no-index" \
    --label "$HASH_LABEL=$hash" -t "$tag" "$ctx" || die "building $tag on $host failed"
  echo "$host: built $tag in $((SECONDS - t0))s (source $hash)"
}

case "${1:-}" in
  ensure) [ $# -ge 2 ] || usage ;;
  controlplane) [ $# -ge 2 ] && [ $# -le 3 ] || usage ;;
  *) usage ;;
esac
command -v docker >/dev/null 2>&1 || die "docker client missing (scripts/docker-hosts.sh start N installs it)"
[ -f "$AGENT_SRC/Dockerfile" ] || die "missing $AGENT_SRC/Dockerfile"
mkdir -p "$CACHE"
exec 9>"$CACHE/images.lock"
flock 9
if [ "$1" = controlplane ]; then
  shift
  build_controlplane "$@"
  exit 0
fi
shift
BUILT_ON=""
for host in "$@"; do
  case "$host" in unix://* | tcp://* | ssh://*) ;; *) host="unix://$host" ;; esac
  docker -H "$host" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker daemon answers on $host"
  ensure_host "$host"
done
