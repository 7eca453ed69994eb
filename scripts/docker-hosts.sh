#!/usr/bin/env bash
# Local Docker daemons for tests and demos, one per "host" hN, each with its own
# data-root, exec-root, pidfile, socket and log:
#   /var/lib/hangar-docker/hN   /run/hangar-docker/hN/{exec,docker.pid,docker.sock}
#   /var/log/hangar-docker-hN.log
#
#   scripts/docker-hosts.sh start N     start h0..h(N-1) unless already answering
#   scripts/docker-hosts.sh stop [I..]  stop the daemons this script started (or hosts I..)
#   scripts/docker-hosts.sh restart I   stop host I (pidfile pid), then start it again
#   scripts/docker-hosts.sh hosts N     print the socket URLs of h0..h(N-1)
set -euo pipefail

LIB_ROOT=${HANGAR_DOCKER_LIB:-/var/lib/hangar-docker}
RUN_ROOT=${HANGAR_DOCKER_RUN:-/run/hangar-docker}
LOG_DIR=${HANGAR_DOCKER_LOGS:-/var/log}
START_TIMEOUT=${HANGAR_DOCKER_START_TIMEOUT:-90}
STOP_TIMEOUT=${HANGAR_DOCKER_STOP_TIMEOUT:-60}

die() { echo "docker-hosts: $*" >&2; exit 1; }
usage() { sed -n '2,10s/^# \{0,1\}//p' "$0" >&2; exit 2; }

rundir() { echo "$RUN_ROOT/h$1"; }
sock() { echo "$RUN_ROOT/h$1/docker.sock"; }
url() { echo "unix://$RUN_ROOT/h$1/docker.sock"; }
pidfile() { echo "$RUN_ROOT/h$1/docker.pid"; }
marker() { echo "$RUN_ROOT/h$1/started-by-docker-hosts"; }
logfile() { echo "$LOG_DIR/hangar-docker-h$1.log"; }

is_index() { [[ $1 =~ ^[0-9]+$ ]] || die "not a host number: $1"; }

answers() {
  [ -S "$(sock "$1")" ] || return 1
  timeout 10 docker -H "$(url "$1")" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# The pid in host I's pidfile, if that process is alive and is this host's dockerd.
daemon_pid() {
  local pf pid
  pf=$(pidfile "$1")
  [ -f "$pf" ] || return 1
  pid=$(tr -dc '0-9' <"$pf")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "dockerd.*$LIB_ROOT/h$1\b" || return 1
  echo "$pid"
}

ensure_dockerd() {
  command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && return
  local out
  out=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq docker.io >"$out" 2>&1; then
    if ! { apt-get update -qq && apt-get install -y -qq docker.io; } >"$out" 2>&1; then
      cat "$out" >&2; rm -f "$out"; die "could not install docker.io"
    fi
  fi
  rm -f "$out"
  command -v dockerd >/dev/null 2>&1 || die "dockerd is still missing after installing docker.io"
}

launch() {
  local i=$1 pid
  answers "$i" && return 0
  if pid=$(daemon_pid "$i"); then
    return 0  # alive but not answering yet (starting up): just wait for it
  fi
  mkdir -p "$LIB_ROOT/h$i" "$(rundir "$i")/exec" "$LOG_DIR"
  rm -f "$(pidfile "$i")" "$(sock "$i")"
  setsid nohup dockerd \
    --data-root "$LIB_ROOT/h$i" \
    --exec-root "$(rundir "$i")/exec" \
    --pidfile "$(pidfile "$i")" \
    --host "$(url "$i")" \
    --storage-driver=overlay2 --bridge=none --iptables=false --ip6tables=false \
    --live-restore=false \
    </dev/null >>"$(logfile "$i")" 2>&1 &
  echo "$!" >"$(marker "$i")"
}

wait_up() {
  local i=$1 deadline=$((SECONDS + START_TIMEOUT))
  until answers "$i"; do
    if [ -f "$(marker "$i")" ] && ! kill -0 "$(cat "$(marker "$i")")" 2>/dev/null \
        && ! daemon_pid "$i" >/dev/null; then
      tail -n 20 "$(logfile "$i")" >&2 || true
      die "h$i: dockerd exited during start-up (log: $(logfile "$i"))"
    fi
    [ $SECONDS -lt $deadline ] || die "h$i: no answer on $(url "$i") after ${START_TIMEOUT}s (log: $(logfile "$i"))"
    sleep 0.5
  done
}

signal_host() {
  local pid
  if pid=$(daemon_pid "$1"); then kill -TERM "$pid" 2>/dev/null || true; fi
}

wait_down() {
  local i=$1 pid deadline=$((SECONDS + STOP_TIMEOUT))
  while pid=$(daemon_pid "$i"); do
    if [ $SECONDS -ge $deadline ]; then
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.2
  done
  deadline=$((SECONDS + 15))
  while answers "$i"; do
    [ $SECONDS -lt $deadline ] || die "h$i still answers on $(url "$i") but its pidfile names no dockerd"
    sleep 0.3
  done
  rm -f "$(marker "$i")"
}

# Stop hosts by the pid in their pidfiles: signal them all, then wait for each.
stop_hosts() {
  local i
  for i in "$@"; do signal_host "$i"; done
  for i in "$@"; do wait_down "$i"; echo "h$i stopped"; done
}

ready_line() {
  echo "h$1 $(url "$1") ready (dockerd pid $(daemon_pid "$1" || echo '?'))"
}

cmd=${1:-}
case "$cmd" in
  start)
    [ $# -eq 2 ] || usage
    is_index "$2"
    ensure_dockerd
    for ((i = 0; i < $2; i++)); do launch "$i"; done
    for ((i = 0; i < $2; i++)); do wait_up "$i"; done
    for ((i = 0; i < $2; i++)); do ready_line "$i"; done
    ;;
  stop)
    shift
    hosts=()
    if [ $# -gt 0 ]; then
      for i in "$@"; do is_index "$i"; hosts+=("$i"); done
    else
      for m in "$RUN_ROOT"/h*/started-by-docker-hosts; do
        [ -e "$m" ] || continue
        i=${m%/started-by-docker-hosts}; hosts+=("${i##*/h}")
      done
    fi
    [ ${#hosts[@]} -eq 0 ] || stop_hosts "${hosts[@]}"
    ;;
  restart)
    [ $# -eq 2 ] || usage
    is_index "$2"
    ensure_dockerd
    signal_host "$2"
    wait_down "$2"
    launch "$2"
    wait_up "$2"
    ready_line "$2"
    ;;
  hosts)
    [ $# -eq 2 ] || usage
    is_index "$2"
    for ((i = 0; i < $2; i++)); do url "$i"; done
    ;;
  *) usage ;;
esac
