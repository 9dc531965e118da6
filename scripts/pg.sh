#!/usr/bin/env bash
# A throwaway Postgres cluster for tests, on a free port on 127.0.0.1.
#   scripts/pg.sh start DIR [WATCH_PID]  prints the server's postgres:// URL;
#                                        with WATCH_PID, the server stops
#                                        when that process ends
#   scripts/pg.sh stop DIR
# Installs Debian's postgresql if no server binaries are found.
set -euo pipefail

find_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
bindir=$(find_bindir)
if [[ -z $bindir || ! -x $bindir/initdb ]]; then
  echo "installing postgresql (Debian's packages)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
  bindir=$(find_bindir)
fi

# initdb and postgres refuse to run as root: use the postgres account.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd=${1:?usage: pg.sh start|stop DIR [WATCH_PID]}
dir=${2:?usage: pg.sh start|stop DIR [WATCH_PID]}

case $cmd in
start)
  mkdir -p "$dir"
  [[ $(id -u) -eq 0 ]] && chown postgres "$dir"
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # fsync off: a test cluster trades durability for speed; it is deleted after.
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" \
    start >/dev/null
  if [[ -n ${3:-} ]]; then
    watch_pid=$3
    nohup bash -c "while kill -0 $watch_pid 2>/dev/null; do sleep 1; done; \
      $(declare -f as_owner); as_owner '$bindir/pg_ctl' -D '$dir/data' -m immediate stop; rm -rf '$dir'" \
      >/dev/null 2>&1 &
  fi
  echo "postgres://postgres@127.0.0.1:$port/postgres"
  ;;
stop)
  as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
  ;;
*)
  echo "usage: pg.sh start|stop DIR [WATCH_PID]" >&2
  exit 2
  ;;
esac
