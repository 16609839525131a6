#!/usr/bin/env bash
# Project-local data stack for ledger-api: PostgreSQL, PgBouncer in transaction
# mode in front of it (so local runs hit the same pooling constraints as
# production), and Redis. Everything listens on 127.0.0.1 on non-default ports
# so it can coexist with a system PostgreSQL/Redis.
#
# Usage: bash scripts/stack.sh up|down|status|env
#        bash scripts/stack.sh start|stop|restart postgres|pgbouncer|redis
#
# Environment:
#   LEDGER_STACK_DIR      stack folder (default: <repo>/.stack)
#   STACK_PG_PORT         PostgreSQL port (default 55432)
#   STACK_PGBOUNCER_PORT  PgBouncer port  (default 56432)
#   STACK_REDIS_PORT      Redis port      (default 56379)
#
# Progress goes to stderr so that `eval "$(bash scripts/stack.sh env)"` and
# similar captures only ever see the machine-readable output.
set -euo pipefail

readonly SERVICES=(postgres pgbouncer redis)
readonly DB_USER=ledger
readonly DATABASES=(ledger ledger_test)
readonly READY_TIMEOUT=30
readonly STOP_TIMEOUT=30
readonly PGBOUNCER_NOFILE=4096
readonly INSTALL_LINE='sudo apt-get install -y postgresql postgresql-contrib pgbouncer redis-server'

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
PROJECT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
readonly SCRIPT_DIR PROJECT

PG_PORT=${STACK_PG_PORT:-55432}
PGB_PORT=${STACK_PGBOUNCER_PORT:-56432}
REDIS_PORT=${STACK_REDIS_PORT:-56379}

# Every connection below passes host/port/user/db explicitly; libpq settings
# inherited from the caller's shell (e.g. PGSSLMODE=require, PGOPTIONS) would
# otherwise silently change how our own admin connections behave.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGDATA PGOPTIONS PGSERVICE \
  PGSERVICEFILE PGSSLMODE PGREQUIRESSL PGTARGETSESSIONATTRS

IS_ROOT=0
[[ $EUID -eq 0 ]] && IS_ROOT=1
readonly IS_ROOT

# PostgreSQL and PgBouncer refuse to run as root; Redis follows along so that
# every file in the stack folder has a single owner.
if ((IS_ROOT)); then
  SVC_USER=postgres
else
  SVC_USER=$(id -un)
fi
readonly SVC_USER

STACK_DIR=""
LINK_PATH="" # set when $PROJECT/.stack has to be a symlink to STACK_DIR
PG_DATA=""

log() { printf 'stack: %s\n' "$*" >&2; }
die() {
  printf 'stack: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat >&2 <<'EOF'
usage: bash scripts/stack.sh up|down|status|env
       bash scripts/stack.sh start|stop|restart postgres|pgbouncer|redis

  up       start whatever is not running (idempotent), wait until all accept connections
  down     stop the processes named in the stack's pid files
  status   one line per service: name, running/stopped, pid, port
  env      DATABASE_URL / DATABASE_DIRECT_URL / REDIS_URL / STACK_DIR lines for eval or .env

env: LEDGER_STACK_DIR, STACK_PG_PORT (55432), STACK_PGBOUNCER_PORT (56432), STACK_REDIS_PORT (56379)
EOF
}

validate_ports() {
  local var port
  for var in STACK_PG_PORT STACK_PGBOUNCER_PORT STACK_REDIS_PORT; do
    port=$(port_of_var "$var")
    if ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
      die "$var=$port is not a valid TCP port"
    fi
  done
  # PostgreSQL and PgBouncer both create run/.s.PGSQL.<port>, so equal ports
  # would collide on the unix socket even before the TCP bind.
  [[ $PG_PORT != "$PGB_PORT" && $PG_PORT != "$REDIS_PORT" && $PGB_PORT != "$REDIS_PORT" ]] ||
    die "STACK_PG_PORT, STACK_PGBOUNCER_PORT and STACK_REDIS_PORT must all differ"
}

port_of_var() {
  case $1 in
    STACK_PG_PORT) printf '%s\n' "$PG_PORT" ;;
    STACK_PGBOUNCER_PORT) printf '%s\n' "$PGB_PORT" ;;
    STACK_REDIS_PORT) printf '%s\n' "$REDIS_PORT" ;;
  esac
}

port_var_of() {
  case $1 in
    postgres) echo STACK_PG_PORT ;;
    pgbouncer) echo STACK_PGBOUNCER_PORT ;;
    redis) echo STACK_REDIS_PORT ;;
  esac
}

port_of() { port_of_var "$(port_var_of "$1")"; }

# ---------------------------------------------------------------------------
# Stack folder
# ---------------------------------------------------------------------------

sha12() {
  if command -v sha256sum >/dev/null 2>&1; then
    printf '%s' "$1" | sha256sum | cut -c1-12
  else
    printf '%s' "$1" | shasum -a 256 | cut -c1-12
  fi
}

# True when the service user can reach $1. Before that user exists (first run,
# before useradd), `nobody` is a stand-in with the same lack of privileges, so
# `env`/`status` compute the same folder as `up` will.
service_user_can_enter() {
  local user=$SVC_USER
  id -u "$user" >/dev/null 2>&1 || user=nobody
  runuser -u "$user" -- test -x "$1" 2>/dev/null
}

# Pure: decides where the stack lives without creating anything, so that
# `env` and `status` have no side effects.
resolve_stack_dir() {
  LINK_PATH=""
  if [[ -n ${LEDGER_STACK_DIR:-} ]]; then
    STACK_DIR=$LEDGER_STACK_DIR
    [[ $STACK_DIR == /* ]] || STACK_DIR=$PWD/$STACK_DIR
  elif ((IS_ROOT)) && ! service_user_can_enter "$PROJECT"; then
    # e.g. a clone under `mktemp -d` (mode 700): the service user cannot reach
    # anything below it, so the data has to live elsewhere. Keyed by project
    # path so parallel clones never share a cluster.
    STACK_DIR=/var/tmp/ledger-api-stack-$(sha12 "$PROJECT")
    LINK_PATH=$PROJECT/.stack
  else
    STACK_DIR=$PROJECT/.stack
  fi
  PG_DATA=$STACK_DIR/pg/data
}

ensure_service_user() {
  ((IS_ROOT)) || return 0
  command -v runuser >/dev/null 2>&1 || die "running as root needs runuser (util-linux) to drop privileges"
  if ! id -u "$SVC_USER" >/dev/null 2>&1; then
    log "creating system user $SVC_USER (PostgreSQL and PgBouncer refuse to run as root)"
    useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
      --shell /usr/sbin/nologin "$SVC_USER"
  fi
}

prepare_stack_dir() {
  if [[ -n $LINK_PATH ]]; then
    if [[ -e $LINK_PATH && ! -L $LINK_PATH ]]; then
      die "$LINK_PATH exists but the $SVC_USER user cannot reach it (a parent directory is not traversable); remove it or set LEDGER_STACK_DIR"
    fi
    mkdir -p "$STACK_DIR"
    ln -sfn "$STACK_DIR" "$LINK_PATH"
  fi
  mkdir -p "$STACK_DIR"/{pg,run,log,redis,pgbouncer}

  # Unix socket paths are limited to ~107 bytes; fail here with a hint rather
  # than with a bind error buried in a log.
  local sock=$STACK_DIR/run/.s.PGSQL.65535
  ((${#sock} <= 100)) || die "stack folder path is too long for unix sockets ($STACK_DIR); set LEDGER_STACK_DIR to a shorter path"

  if ((IS_ROOT)); then
    chown -R "$SVC_USER:" "$STACK_DIR"
    service_user_can_enter "$STACK_DIR/run" ||
      die "user $SVC_USER cannot reach $STACK_DIR (a parent directory is not traversable); set LEDGER_STACK_DIR to a folder under e.g. /var/tmp"
  fi
}

# Serialises concurrent invocations (e.g. two test runners calling `up`).
take_lock() {
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$STACK_DIR/.lock"
  flock -w 120 9 || die "another stack.sh is still working on $STACK_DIR"
}

# Runs a command as the service user from a directory that user can read
# (PostgreSQL tools complain when the cwd is e.g. /root). fd 9 is the lock:
# daemons must not inherit it or the lock would be held forever.
run_as() {
  if ((IS_ROOT)); then
    (cd "$STACK_DIR" && runuser -u "$SVC_USER" -- "$@" 9>&-)
  else
    ("$@" 9>&-)
  fi
}

# ---------------------------------------------------------------------------
# Binaries
# ---------------------------------------------------------------------------

PG_BINDIR=""
MISSING=()

find_pg_bindir() {
  PG_BINDIR=""
  local found ver dirs=() d
  # A cluster can only be started by the major version that created it, so
  # once one exists its version wins over "newest installed".
  if [[ -n $PG_DATA && -r $PG_DATA/PG_VERSION ]]; then
    ver=$(<"$PG_DATA/PG_VERSION")
    if [[ -x /usr/lib/postgresql/$ver/bin/initdb ]]; then
      PG_BINDIR=/usr/lib/postgresql/$ver/bin
      return 0
    fi
  fi
  if found=$(command -v initdb 2>/dev/null); then
    # PATH entries are often symlinks (/usr/local/bin, Homebrew); the real
    # directory is where the matching psql/pg_isready/createdb live.
    found=$(readlink -f -- "$found" 2>/dev/null || printf '%s\n' "$found")
    PG_BINDIR=$(dirname -- "$found")
    return 0
  fi
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/initdb ]] && dirs+=("$d")
  done
  if ((${#dirs[@]})); then
    PG_BINDIR=$(printf '%s\n' "${dirs[@]}" | sort -V | tail -n1)
  fi
}

# Server and client tools are taken from the same directory when possible so
# that versions match (Debian's /usr/bin/psql is a version-picking wrapper).
pg_tool() {
  if [[ -n $PG_BINDIR && -x $PG_BINDIR/$1 ]]; then
    printf '%s\n' "$PG_BINDIR/$1"
  else
    command -v "$1" 2>/dev/null
  fi
}

other_tool() {
  local name=$1 fallback=${2:-}
  if command -v "$name" 2>/dev/null; then
    return 0
  elif [[ -n $fallback && -x $fallback ]]; then
    printf '%s\n' "$fallback"
  else
    return 1
  fi
}

resolve_bins() {
  MISSING=()
  find_pg_bindir
  INITDB=$(pg_tool initdb) || MISSING+=(initdb)
  PG_CTL=$(pg_tool pg_ctl) || MISSING+=(pg_ctl)
  POSTGRES=$(pg_tool postgres) || MISSING+=(postgres)
  PSQL=$(pg_tool psql) || MISSING+=(psql)
  CREATEDB=$(pg_tool createdb) || MISSING+=(createdb)
  PG_ISREADY=$(pg_tool pg_isready) || MISSING+=(pg_isready)
  PGBOUNCER=$(other_tool pgbouncer /usr/sbin/pgbouncer) || MISSING+=(pgbouncer)
  REDIS_SERVER=$(other_tool redis-server /usr/bin/redis-server) || MISSING+=(redis-server)
  REDIS_CLI=$(other_tool redis-cli /usr/bin/redis-cli) || MISSING+=(redis-cli)
}

ensure_bins() {
  resolve_bins
  ((${#MISSING[@]} == 0)) && return 0
  if ((IS_ROOT)) && [[ -f /etc/debian_version ]] && command -v apt-get >/dev/null 2>&1; then
    log "missing ${MISSING[*]}; installing with apt-get"
    apt-get update >&2
    # --no-upgrade: packages that are already installed (the system
    # PostgreSQL/Redis) must not be upgraded and restarted as a side effect.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-upgrade \
      postgresql postgresql-contrib pgbouncer redis-server >&2
    resolve_bins
    ((${#MISSING[@]} == 0)) || die "still missing after apt-get install: ${MISSING[*]}"
  else
    die "missing ${MISSING[*]}. Install them with:
    $INSTALL_LINE
  (macOS: brew install postgresql@15 pgbouncer redis)"
  fi
}

# ---------------------------------------------------------------------------
# Process bookkeeping
# ---------------------------------------------------------------------------

pidfile_of() {
  case $1 in
    postgres) printf '%s\n' "$PG_DATA/postmaster.pid" ;;
    pgbouncer) printf '%s\n' "$STACK_DIR/run/pgbouncer.pid" ;;
    redis) printf '%s\n' "$STACK_DIR/run/redis.pid" ;;
  esac
}

logfile_of() { printf '%s\n' "$STACK_DIR/log/$1.log"; }

proc_name_of() {
  case $1 in
    redis) echo redis-server ;;
    *) echo "$1" ;;
  esac
}

# Prints the command name of a live process. Zombies count as dead: PID 1 in
# containers is not always quick (or willing) to reap, and a zombie neither
# holds its port nor can be stopped.
proc_comm() {
  local stat state
  if [[ -r /proc/$1/stat ]]; then
    stat=$(<"/proc/$1/stat") || return 1
    state=${stat##*) }
    [[ ${state:0:1} != Z ]] || return 1
    cat "/proc/$1/comm" 2>/dev/null
  else
    read -r state stat < <(ps -o stat= -o comm= -p "$1" 2>/dev/null) || return 1
    [[ ${state:0:1} != Z ]] || return 1
    printf '%s\n' "$stat"
  fi
}

# True when $2 is alive and is the expected program; a pid file that survived
# a reboot can name an unrelated process, which we must neither trust nor kill.
pid_is_service() {
  local comm
  comm=$(proc_comm "$2") || return 1
  [[ -n $comm && $comm == *"$(proc_name_of "$1")"* ]]
}

# Prints the pid from the service's pid file when that process is alive.
live_pid() {
  local file pid
  file=$(pidfile_of "$1")
  [[ -r $file ]] || return 1
  pid=$(head -n1 "$file" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  pid_is_service "$1" "$pid" || return 1
  printf '%s\n' "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_port_free() {
  local svc=$1 port var who=""
  port=$(port_of "$svc")
  var=$(port_var_of "$svc")
  port_in_use "$port" || return 0
  if command -v ss >/dev/null 2>&1; then
    who=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(.*)' | head -n1 || true)
  fi
  die "port $port on 127.0.0.1 (wanted by $svc) is already in use by another process${who:+ $who}; set $var to a free port"
}

tail_log() {
  local file
  file=$(logfile_of "$1")
  if [[ -r $file ]]; then
    log "last lines of $file:"
    tail -n 30 "$file" >&2 || true
  fi
}

# Polls "$@" until it succeeds; bails out early if the process is gone so a
# crash on startup does not cost the full timeout.
wait_ready() {
  local svc=$1 i
  shift
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    # Daemons write their pid file only after forking, so allow a moment.
    if ((i >= 30)) && ! live_pid "$svc" >/dev/null; then
      log "$svc exited during startup"
      tail_log "$svc"
      exit 1
    fi
    sleep 0.1
  done
  log "$svc did not accept connections on 127.0.0.1:$(port_of "$svc") within ${READY_TIMEOUT}s"
  tail_log "$svc"
  exit 1
}

wait_gone() {
  local svc=$1 pid=$2 i
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    pid_is_service "$svc" "$pid" || return 0
    sleep 0.1
  done
  return 1
}

psql_at() {
  local port=$1 db=$2
  shift 2
  PGCONNECT_TIMEOUT=3 "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$DB_USER" -d "$db" "$@"
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

init_postgres() {
  [[ -f $PG_DATA/PG_VERSION ]] && return 0
  [[ -e $PG_DATA ]] && die "$PG_DATA exists but holds no cluster (interrupted initdb?); move it away and rerun"
  local initlog=$STACK_DIR/log/initdb.log
  log "initialising PostgreSQL cluster in $PG_DATA"
  if ! run_as "$INITDB" -D "$PG_DATA" -U "$DB_USER" --auth=trust -E UTF8 --locale=C.UTF-8 >"$initlog" 2>&1; then
    # C.UTF-8 is missing on older macOS/glibc; plain C still gives UTF8 storage.
    log "initdb with --locale=C.UTF-8 failed, retrying with --locale=C"
    rm -rf "$PG_DATA"
    run_as "$INITDB" -D "$PG_DATA" -U "$DB_USER" --auth=trust -E UTF8 --locale=C >>"$initlog" 2>&1 ||
      {
        tail -n 30 "$initlog" >&2
        die "initdb failed (full log: $initlog)"
      }
  fi
}

# Settings live in an include file rather than on the pg_ctl command line so a
# plain `pg_ctl restart` (or a manual start) keeps them. Rewritten on every
# start so a changed STACK_PG_PORT takes effect.
write_pg_conf() {
  local conf=$PG_DATA/postgresql.conf conf_dir=$PG_DATA/conf.d
  if ! grep -q "^include_dir = 'conf.d'" "$conf"; then
    printf "\n# Added by scripts/stack.sh; its settings live in conf.d/.\ninclude_dir = 'conf.d'\n" >>"$conf"
  fi
  mkdir -p "$conf_dir"
  cat >"$conf_dir/ledger-stack.conf" <<EOF
# Generated by scripts/stack.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '${STACK_DIR//\'/\'\'}/run'
max_connections = 100
shared_buffers = 256MB
shared_preload_libraries = 'pg_stat_statements'
# It is a ledger: even locally, never trade durability for speed, so that
# crash/outage tests see the same guarantees as production.
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
  if ((IS_ROOT)); then
    chown -R "$SVC_USER:" "$conf_dir"
  fi
}

pg_ready() { "$PG_ISREADY" -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres; }

ensure_databases() {
  local db exists
  for db in "${DATABASES[@]}"; do
    exists=$(psql_at "$PG_PORT" postgres -tAc "select 1 from pg_database where datname = '$db'")
    if [[ $exists != 1 ]]; then
      log "creating database $db"
      PGCONNECT_TIMEOUT=3 "$CREATEDB" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -O "$DB_USER" "$db"
    fi
  done
}

# postgres refuses to start while the pid in postmaster.pid answers kill -0.
# After a SIGKILL that pid can linger as a zombie until PID 1 gets round to
# reaping it (slow in some containers), and after a reboot it can belong to an
# unrelated process; only a genuinely dead pid is cleaned up by postgres itself.
clear_stale_postmaster_pid() {
  local file=$PG_DATA/postmaster.pid old i
  [[ -r $file ]] || return 0
  old=$(head -n1 "$file" 2>/dev/null) || return 0
  [[ $old =~ ^[0-9]+$ ]] || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$old" 2>/dev/null || return 0
    proc_comm "$old" >/dev/null && break
    sleep 0.1
  done
  log "removing stale $file (pid $old is not our postgres)"
  rm -f "$file"
}

start_postgres() {
  local pid running_port
  if pid=$(live_pid postgres); then
    running_port=$(sed -n 4p "$PG_DATA/postmaster.pid")
    [[ $running_port == "$PG_PORT" ]] ||
      die "postgres (pid $pid) is running on port $running_port but STACK_PG_PORT is $PG_PORT; run: bash scripts/stack.sh restart postgres"
    log "postgres already running (pid $pid)"
  else
    ensure_port_free postgres
    clear_stale_postmaster_pid
    init_postgres
    write_pg_conf
    log "starting postgres on 127.0.0.1:$PG_PORT"
    run_as "$PG_CTL" -D "$PG_DATA" -p "$POSTGRES" -l "$(logfile_of postgres)" -w -t "$READY_TIMEOUT" start >&2 || {
      tail_log postgres
      die "postgres failed to start"
    }
  fi
  wait_ready postgres pg_ready
  ensure_databases
}

stop_postgres() {
  local pid=$1
  if [[ -n ${PG_CTL:-} ]]; then
    run_as "$PG_CTL" -D "$PG_DATA" -m fast -w -t "$STOP_TIMEOUT" stop >&2 ||
      run_as "$PG_CTL" -D "$PG_DATA" -m immediate -w -t "$STOP_TIMEOUT" stop >&2 || true
  else
    # Without pg_ctl: SIGINT is exactly what `pg_ctl stop -m fast` sends.
    kill -INT "$pid"
  fi
}

# ---------------------------------------------------------------------------
# PgBouncer
# ---------------------------------------------------------------------------

write_pgbouncer_conf() {
  local dir=$STACK_DIR/pgbouncer
  # auth_type=trust still requires the user to be listed in auth_file.
  printf '"%s" ""\n' "$DB_USER" >"$dir/userlist.txt"
  cat >"$dir/pgbouncer.ini" <<EOF
;; Generated by scripts/stack.sh on every start; edits are overwritten.
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $STACK_DIR/run
pool_mode = transaction
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $DB_USER
stats_users = $DB_USER
default_pool_size = 10
max_client_conn = 2000
;; The API's own pools are small; this caps what every client together can hold on the server.
max_db_connections = 20
;; While PostgreSQL is down a client would wait 120 s for a server connection by default; fail fast instead so
;; the API answers 503 within seconds and recovers by itself when the server is back.
query_wait_timeout = 10
server_connect_timeout = 3
server_login_retry = 1
;; Transaction pooling: nothing session-level survives a transaction anyway.
server_reset_query =
ignore_startup_parameters = extra_float_digits,options,search_path,application_name
pidfile = $STACK_DIR/run/pgbouncer.pid
logfile = $(logfile_of pgbouncer)
EOF
  if ((IS_ROOT)); then
    chown "$SVC_USER:" "$dir/userlist.txt" "$dir/pgbouncer.ini"
  fi
}

# The admin console answers even while PostgreSQL is down (tests stop it to
# simulate outages); when PostgreSQL is up we also prove the full path works.
pgbouncer_ready() {
  psql_at "$PGB_PORT" pgbouncer -tAc 'show version' >/dev/null || return 1
  if live_pid postgres >/dev/null; then
    [[ $(psql_at "$PGB_PORT" "$DB_USER" -tAc 'select 1') == 1 ]]
  fi
}

# max_client_conn=2000 needs a file descriptor per client. The limit has to be
# raised inside the service user's session: runuser's pam_limits resets the
# soft limit (to 1024 on Debian), so raising it in this shell would be lost.
# shellcheck disable=SC2016 # expanded by the inner sh, not here
readonly NOFILE_WRAPPER='want=$1; shift
soft=$(ulimit -Sn); hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
if [ "$soft" != unlimited ] && [ "$soft" -lt "$want" ]; then ulimit -Sn "$want"; fi
exec "$@"'

start_pgbouncer() {
  local pid ini=$STACK_DIR/pgbouncer/pgbouncer.ini
  if pid=$(live_pid pgbouncer); then
    port_in_use "$PGB_PORT" ||
      die "pgbouncer (pid $pid) is running but not on port $PGB_PORT (STACK_PGBOUNCER_PORT changed?); run: bash scripts/stack.sh restart pgbouncer"
    log "pgbouncer already running (pid $pid)"
  else
    ensure_port_free pgbouncer
    rm -f "$(pidfile_of pgbouncer)"
    write_pgbouncer_conf
    log "starting pgbouncer on 127.0.0.1:$PGB_PORT (transaction pooling -> postgres :$PG_PORT)"
    run_as /bin/sh -c "$NOFILE_WRAPPER" sh "$PGBOUNCER_NOFILE" "$PGBOUNCER" -d "$ini" >&2 || {
      tail_log pgbouncer
      die "pgbouncer failed to start"
    }
  fi
  wait_ready pgbouncer pgbouncer_ready
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

redis_ready() { [[ $("$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

start_redis() {
  local pid
  if pid=$(live_pid redis); then
    port_in_use "$REDIS_PORT" ||
      die "redis (pid $pid) is running but not on port $REDIS_PORT (STACK_REDIS_PORT changed?); run: bash scripts/stack.sh restart redis"
    log "redis already running (pid $pid)"
  else
    ensure_port_free redis
    rm -f "$(pidfile_of redis)"
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    # No persistence: Redis is a cache/queue here, and tests expect a clean
    # instance after a restart.
    run_as "$REDIS_SERVER" --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
      --save "" --appendonly no --dir "$STACK_DIR/redis" \
      --pidfile "$(pidfile_of redis)" --logfile "$(logfile_of redis)" \
      --unixsocket "" --maxclients 10000 >&2 || {
      tail_log redis
      die "redis failed to start"
    }
  fi
  wait_ready redis redis_ready
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

start_service() { "start_$1"; }

stop_service() {
  local svc=$1 pid
  if ! pid=$(live_pid "$svc"); then
    log "$svc is not running"
    return 0
  fi
  log "stopping $svc (pid $pid)"
  case $svc in
    postgres) stop_postgres "$pid" ;;
    *) kill -TERM "$pid" 2>/dev/null || true ;;
  esac
  if ! wait_gone "$svc" "$pid"; then
    # Newer PgBouncer treats SIGTERM as "wait for clients to leave", which an
    # app holding pooled connections never does; callers need it gone.
    log "$svc (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$svc" "$pid" || die "could not stop $svc (pid $pid)"
  fi
  # A killed daemon leaves its pid file behind; drop it so status stays honest.
  if [[ $svc != postgres ]]; then
    rm -f "$(pidfile_of "$svc")"
  fi
}

cmd_status() {
  local svc pid
  for svc in "${SERVICES[@]}"; do
    if pid=$(live_pid "$svc"); then
      printf '%-10s %-8s pid=%-8s port=%s\n' "$svc" running "$pid" "$(port_of "$svc")"
    else
      printf '%-10s %-8s pid=%-8s port=%s\n' "$svc" stopped - "$(port_of "$svc")"
    fi
  done
}

cmd_env() {
  printf 'DATABASE_URL=%s\n' "postgres://$DB_USER@127.0.0.1:$PGB_PORT/ledger"
  printf 'DATABASE_DIRECT_URL=%s\n' "postgres://$DB_USER@127.0.0.1:$PG_PORT/ledger"
  printf 'REDIS_URL=%s\n' "redis://127.0.0.1:$REDIS_PORT"
  # Single quotes rather than printf %q: still eval-safe, and dotenv-style
  # parsers (scripts/local-stack.ts) only know how to strip quotes.
  if [[ $STACK_DIR =~ ^[A-Za-z0-9_./:@+-]+$ ]]; then
    printf 'STACK_DIR=%s\n' "$STACK_DIR"
  else
    printf "STACK_DIR='%s'\n" "${STACK_DIR//\'/\'\\\'\'}"
  fi
}

# Everything that may create or start something goes through here.
prepare_for_start() {
  resolve_stack_dir
  ensure_bins
  ensure_service_user
  # The service user may only exist now, which can change the answer.
  resolve_stack_dir
  prepare_stack_dir
  take_lock
}

# Stopping never installs anything; pg_ctl is used when available.
prepare_for_stop() {
  resolve_stack_dir
  [[ -d $STACK_DIR ]] || return 1
  resolve_bins
  take_lock
}

check_service() {
  case ${1:-} in
    postgres | pgbouncer | redis) ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main() {
  local cmd=${1:-} svc
  validate_ports
  case $cmd in
    up)
      (($# == 1)) || {
        usage
        exit 2
      }
      prepare_for_start
      for svc in "${SERVICES[@]}"; do start_service "$svc"; done
      printf 'stack up: postgres 127.0.0.1:%s, pgbouncer 127.0.0.1:%s (transaction pool), redis 127.0.0.1:%s, dir %s\n' \
        "$PG_PORT" "$PGB_PORT" "$REDIS_PORT" "$STACK_DIR"
      ;;
    down)
      (($# == 1)) || {
        usage
        exit 2
      }
      if prepare_for_stop; then
        # Reverse order: clients of a service go away before the service.
        for svc in redis pgbouncer postgres; do stop_service "$svc"; done
      fi
      log "stack down"
      ;;
    start | stop | restart)
      (($# == 2)) || {
        usage
        exit 2
      }
      svc=$2
      check_service "$svc"
      if [[ $cmd == start ]]; then
        prepare_for_start
        start_service "$svc"
      else
        if prepare_for_stop; then
          stop_service "$svc"
        fi
        if [[ $cmd == restart ]]; then
          prepare_for_start
          start_service "$svc"
        fi
      fi
      ;;
    status)
      resolve_stack_dir
      cmd_status
      ;;
    env)
      resolve_stack_dir
      cmd_env
      ;;
    -h | --help | help)
      usage
      ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main "$@"
