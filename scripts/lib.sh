# Shared helpers for scripts/run and scripts/test. Sourced, not executed.

PY=${PYTHON:-python3}

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

# ensure_venv [EXTRAS]: .venv with Hangar installed with EXTRAS (e.g. "test,agent";
# none by default). One stamp per set of extras, so a run's lighter install never
# stands in for the test extra and vice versa.
ensure_venv() {
  local extras=${1:-}
  if [ ! -x .venv/bin/python ]; then
    log "creating the virtualenv in .venv"
    "$PY" -m venv .venv
  fi
  local stamp=".venv/.hangar-installed-${extras:-runtime}"
  stamp=${stamp//,/-}
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing Hangar and its dependencies${extras:+ (extras: $extras)}"
    .venv/bin/pip install --disable-pip-version-check -q -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
}

psql_admin() {
  psql -h 127.0.0.1 -p 5432 -U postgres -v ON_ERROR_STOP=1 "$@"
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return; sleep 1; done
  echo "PostgreSQL did not start" >&2; exit 1
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return; sleep 1; done
  echo "Redis did not start" >&2; exit 1
}

# NATS with JetStream for the stream tests (deployments/streams/nats.py): started
# on 127.0.0.1:4222 with its own store under /tmp if nothing answers there.
ensure_nats() {
  if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then return; fi
  if ! command -v nats-server >/dev/null 2>&1; then
    log "installing Debian's nats-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq nats-server >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; }
  fi
  log "starting NATS JetStream"
  mkdir -p /tmp/hangar-nats
  nohup nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/hangar-nats \
    >/tmp/hangar-nats/server.log 2>&1 &
  for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && return; sleep 1; done
  echo "NATS did not start" >&2; exit 1
}

ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then return; fi
  log "installing Debian's chromium for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
}

ensure_compose() {
  if command -v docker-compose >/dev/null 2>&1; then return; fi
  log "installing Debian's docker-compose (the suite checks docker-compose.yml with it)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq docker-compose >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; }
}
