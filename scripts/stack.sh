#!/usr/bin/env bash
# Project-local data stack for ledger-api: PostgreSQL, PgBouncer in transaction
# mode in front of it (so local runs hit the same pooling constraints as
# production), and Redis. Everything listens on 127.0.0.1 on non-default ports
# so it can coexist with a system PostgreSQL/Redis.
#
# Usage: bash scripts/stack.sh up|down|status|env|pgbouncer-conf
#        bash scripts/stack.sh start|stop|restart postgres|pgbouncer|redis
#        bash scripts/stack.sh replica up|down|status|env
#        bash scripts/stack.sh cluster up|down|status|env
#
# Environment:
#   LEDGER_STACK_DIR      stack folder (default: <repo>/.stack)
#   STACK_PG_PORT         PostgreSQL port (default 61432)
#   STACK_PGBOUNCER_PORT  PgBouncer port  (default 62432)
#   STACK_REDIS_PORT      Redis port      (default 61379)
#   STACK_PG_REPLICA_PORT         streaming replica port (default 61433), `replica` only
#   STACK_REDIS_CLUSTER_PORT      first Redis Cluster node port (default 57001), `cluster` only
#   STACK_REDIS_CLUSTER_REPLICAS  replicas per cluster master, 0 or 1 (default 1: 3 masters + 3 replicas)
# A port that is not set comes from the stack folder's `ports` file (what the stack last started on), else it is
# the default, unless a default is held by something other than this stack (another clone's stack, say): then
# every unset port comes from a block derived from the stack folder's path (see "Ports" below).
#
# PgBouncer's pooling settings come from deploy/pgbouncer/pgbouncer.ini (see write_pgbouncer_conf).
#
# Progress goes to stderr so that `eval "$(bash scripts/stack.sh env)"` and
# similar captures only ever see the machine-readable output.
set -euo pipefail

readonly SERVICES=(postgres pgbouncer redis)
# The owner (migrations, seeding, operator tools: DATABASE_DIRECT_URL) and the API's restricted role (DATABASE_URL,
# through PgBouncer), which sql/007_ledger_roles.sql grants only what the API needs.
readonly DB_USER=ledger
readonly API_USER=ledger_api
# The cluster's superuser: creates the roles and databases (sql/bootstrap.sql), streams to the replica; never used
# by the service or its tools.
readonly SUPER_USER=postgres
readonly DATABASES=(ledger ledger_test)
readonly READY_TIMEOUT=30
readonly STOP_TIMEOUT=30
readonly PGBOUNCER_NOFILE=4096
readonly INSTALL_LINE='sudo apt-get install -y postgresql postgresql-contrib pgbouncer redis-server'

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
PROJECT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
readonly SCRIPT_DIR PROJECT

# Filled by resolve_ports (see "Ports" below); the cluster's settings are validated only by its own commands.
PG_PORT=""
PGB_PORT=""
REDIS_PORT=""
REPLICA_PORT=""
CLUSTER_PORT=""
CLUSTER_REPLICAS=${STACK_REDIS_CLUSTER_REPLICAS:-1}

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
REPLICA_DATA=""
CLUSTER_DIR=""

log() { printf 'stack: %s\n' "$*" >&2; }
die() {
  printf 'stack: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat >&2 <<'EOF'
usage: bash scripts/stack.sh up|down|status|env|pgbouncer-conf
       bash scripts/stack.sh start|stop|restart postgres|pgbouncer|redis
       bash scripts/stack.sh replica up|down|status|env
       bash scripts/stack.sh cluster up|down|status|env

  up       start whatever is not running (idempotent), wait until all accept connections
  down     stop the processes named in the stack's pid files (and the replica and cluster, if any)
  status   one line per service: name, running/stopped, pid, port
  env      DATABASE_URL / DATABASE_DIRECT_URL / REDIS_URL / STACK_DIR lines for eval or .env, and JWT_SECRET
           once `up` has generated it (jwt-secret in the stack folder, mode 0600)
  pgbouncer-conf  the pgbouncer.ini that `start pgbouncer` writes (starts nothing)

  replica up     clone the running primary (pg_basebackup -R) and start it as a streaming hot standby
  replica down   stop the replica and delete its data (the next `replica up` clones again)
  replica env    DATABASE_REPLICA_URL=... (straight to the replica, database ledger)
  cluster up     start a Redis Cluster: 3 masters, plus 3 replicas unless STACK_REDIS_CLUSTER_REPLICAS=0
  cluster down   stop its nodes and delete their folder (a cluster holds nothing persistent here)
  cluster env    REDIS_CLUSTER_NODES=host:port,...

env: LEDGER_STACK_DIR, STACK_PG_PORT (61432), STACK_PGBOUNCER_PORT (62432), STACK_REDIS_PORT (61379),
     STACK_PG_REPLICA_PORT (61433), STACK_REDIS_CLUSTER_PORT (57001), STACK_REDIS_CLUSTER_REPLICAS (1)
     Unset ports: the stack folder's `ports` file, else the defaults, else (a default held by another
     process) a block of ports derived from the stack folder's path; `up` says which.
EOF
}

# ---------------------------------------------------------------------------
# Port variables
# ---------------------------------------------------------------------------

readonly PORT_VARS=(STACK_PG_PORT STACK_PGBOUNCER_PORT STACK_REDIS_PORT STACK_PG_REPLICA_PORT STACK_REDIS_CLUSTER_PORT)
readonly MAIN_PORT_VARS=(STACK_PG_PORT STACK_PGBOUNCER_PORT STACK_REDIS_PORT)

# The shell variable holding the port that the STACK_* variable $1 names.
shell_var_of() {
  case $1 in
    STACK_PG_PORT) echo PG_PORT ;;
    STACK_PGBOUNCER_PORT) echo PGB_PORT ;;
    STACK_REDIS_PORT) echo REDIS_PORT ;;
    STACK_PG_REPLICA_PORT) echo REPLICA_PORT ;;
    STACK_REDIS_CLUSTER_PORT) echo CLUSTER_PORT ;;
  esac
}

port_of_var() {
  local name
  name=$(shell_var_of "$1")
  printf '%s\n' "${!name}"
}

set_port_of_var() { printf -v "$(shell_var_of "$1")" '%s' "$2"; }

# True when the user set the STACK_* variable $1: then it wins over the ports file and is never chosen again.
is_explicit() { [[ -n ${!1:-} ]]; }

port_var_of() {
  case $1 in
    postgres) echo STACK_PG_PORT ;;
    pgbouncer) echo STACK_PGBOUNCER_PORT ;;
    redis) echo STACK_REDIS_PORT ;;
    replica) echo STACK_PG_REPLICA_PORT ;;
    cluster) echo STACK_REDIS_CLUSTER_PORT ;;
  esac
}

service_of_var() {
  case $1 in
    STACK_PG_PORT) echo postgres ;;
    STACK_PGBOUNCER_PORT) echo pgbouncer ;;
    STACK_REDIS_PORT) echo redis ;;
    STACK_PG_REPLICA_PORT) echo replica ;;
    STACK_REDIS_CLUSTER_PORT) echo cluster ;;
  esac
}

port_of() { port_of_var "$(port_var_of "$1")"; }

validate_port_value() {
  local var=$1 port=$2
  if ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
    die "$var=$port is not a valid TCP port"
  fi
}

validate_ports() {
  local var
  for var in "${PORT_VARS[@]}"; do validate_port_value "$var" "$(port_of_var "$var")"; done
  # PostgreSQL and PgBouncer both create run/.s.PGSQL.<port>, so equal ports
  # would collide on the unix socket even before the TCP bind.
  [[ $PG_PORT != "$PGB_PORT" && $PG_PORT != "$REDIS_PORT" && $PGB_PORT != "$REDIS_PORT" ]] ||
    die "STACK_PG_PORT, STACK_PGBOUNCER_PORT and STACK_REDIS_PORT must all differ"
}

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
  REPLICA_DATA=$STACK_DIR/pg/replica
  CLUSTER_DIR=$STACK_DIR/redis-cluster
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
    replica) printf '%s\n' "$REPLICA_DATA/postmaster.pid" ;;
    cluster-*) printf '%s\n' "$CLUSTER_DIR/${1#cluster-}/redis.pid" ;;
  esac
}

logfile_of() { printf '%s\n' "$STACK_DIR/log/$1.log"; }

proc_name_of() {
  case $1 in
    redis | cluster-*) echo redis-server ;;
    replica) echo postgres ;;
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
  local svc=$1 port var who="" hint
  port=$(port_of "$svc")
  var=$(port_var_of "$svc")
  port_in_use "$port" || return 0
  if command -v ss >/dev/null 2>&1; then
    who=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(.*)' | head -n1 || true)
  fi
  if is_explicit "$var"; then
    hint="set $var to a free port"
  else
    hint="stop this stack (bash scripts/stack.sh down) so that its next start chooses free ports, or set $var to a free port"
  fi
  die "port $port on 127.0.0.1 (wanted by $svc) is already in use by another process${who:+ $who}; $hint"
}

# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------
# Each port comes from, in this order: its STACK_* variable; the `ports` file in the stack folder, where every
# start records the ports it used, so that `env`, `status`, `stop` and `start SERVICE` run later by any process
# find the running stack; else a fresh choice: the defaults when each one is free (or held by this stack's own
# process), otherwise a block of ports derived from the stack folder's path, so that a second clone of the
# project (another folder) gets ports of its own without anyone setting anything. A start that finds a saved
# port held by another process while nothing of this stack runs chooses again.
# Defaults and blocks lie above Linux's ephemeral range (32768-60999), so an outgoing connection's local port can
# never be holding one when a service (re)starts (the cluster's default, 57001, is older: start_cluster retries).

# A block: BLOCK_SIZE consecutive ports from BLOCK_FIRST + BLOCK_SIZE * n for n < BLOCK_COUNT (so up to 65529),
# never one holding a default port. The folder's hash picks the first block tried; taken ones are skipped.
readonly BLOCK_FIRST=61000 BLOCK_SIZE=10 BLOCK_COUNT=453 BLOCK_TRIES=64
PORTS_FILE=""
PORTS_CHOSEN=""  # set when ports were chosen afresh: "default" or "derived"
CHOSEN_VARS=()   # and for which variables

default_port_of_var() {
  case $1 in
    STACK_PG_PORT) echo 61432 ;;
    STACK_PGBOUNCER_PORT) echo 62432 ;;
    STACK_REDIS_PORT) echo 61379 ;;
    STACK_PG_REPLICA_PORT) echo 61433 ;;
    STACK_REDIS_CLUSTER_PORT) echo 57001 ;;
  esac
}

# Where a variable's port sits in a block: postgres, replica, pgbouncer, redis, then the cluster's (up to 6) nodes.
block_offset_of_var() {
  case $1 in
    STACK_PG_PORT) echo 0 ;;
    STACK_PG_REPLICA_PORT) echo 1 ;;
    STACK_PGBOUNCER_PORT) echo 2 ;;
    STACK_REDIS_PORT) echo 3 ;;
    STACK_REDIS_CLUSTER_PORT) echo 4 ;;
  esac
}

# Every port that variable $1 occupies when its value is $2 (the cluster: one per node).
ports_of_var() {
  local n=1 i
  [[ $1 == STACK_REDIS_CLUSTER_PORT ]] && n=$(cluster_size)
  for ((i = 0; i < n; i++)); do echo $((10#$2 + i)); done
}

# Pids listening on 127.0.0.1:$1, when ss can tell (it names other users' processes only to root).
listener_pids() {
  local pids
  command -v ss >/dev/null 2>&1 || return 1
  pids=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 || true)
  [[ -n $pids ]] && printf '%s\n' "$pids"
}

# True when port $2 of variable $1 is held by this stack's own process for it, not by a stranger.
held_by_us() {
  local var=$1 port=$2 svc pid pids
  svc=$(service_of_var "$var")
  [[ $svc == cluster ]] && svc=cluster-$port
  pid=$(live_pid "$svc") || return 1
  if pids=$(listener_pids "$port"); then
    grep -qx "$pid" <<<"$pids"
  elif [[ $svc == postgres || $svc == replica ]]; then
    [[ $(sed -n 4p "$(pidfile_of "$svc")" 2>/dev/null) == "$port" ]]
  else
    return 0 # cannot tell; our live process most likely holds its own port
  fi
}

port_available() { ! port_in_use "$2" || held_by_us "$1" "$2"; }

# True when port $2 is already one of another variable's ports.
port_used_by_other() {
  local var=$1 port=$2 other value p
  for other in "${PORT_VARS[@]}"; do
    [[ $other == "$var" ]] && continue
    value=$(port_of_var "$other")
    [[ $value =~ ^[0-9]+$ ]] || continue
    for p in $(ports_of_var "$other" "$value"); do
      [[ $p == "$port" ]] && return 0
    done
  done
  return 1
}

# True when every port that variables "$@" would occupy at base $1 (a default or a block) is usable.
ports_usable() {
  local base=$1 var p
  shift
  for var; do
    for p in $(ports_of_var "$var" "$((base + $(block_offset_of_var "$var")))"); do
      port_used_by_other "$var" "$p" && return 1
      port_available "$var" "$p" || return 1
    done
  done
}

defaults_usable() {
  local var p
  for var; do
    for p in $(ports_of_var "$var" "$(default_port_of_var "$var")"); do
      port_used_by_other "$var" "$p" && return 1
      port_available "$var" "$p" || return 1
    done
  done
}

block_holds_default() {
  local var d
  for var in "${PORT_VARS[@]}"; do
    d=$(default_port_of_var "$var")
    ((d >= $1 && d < $1 + BLOCK_SIZE)) && return 0
  done
  return 1
}

# Prints the base of the first usable block for variables "$@", starting at the one the stack folder hashes to.
derived_block() {
  local start i base
  start=$((16#$(sha12 "$STACK_DIR" | cut -c1-8) % BLOCK_COUNT))
  for ((i = 0; i < BLOCK_TRIES; i++)); do
    base=$((BLOCK_FIRST + (start + i) % BLOCK_COUNT * BLOCK_SIZE))
    block_holds_default "$base" && continue
    # ports_usable adds each variable's offset itself.
    if ports_usable "$base" "$@"; then
      echo "$base"
      return 0
    fi
  done
  return 1
}

# Fills variables "$@" (whose ports are unset) with the defaults if they are usable, else with a derived block.
choose_ports() {
  local var base
  CHOSEN_VARS+=("$@")
  if defaults_usable "$@"; then
    for var; do set_port_of_var "$var" "$(default_port_of_var "$var")"; done
    [[ $PORTS_CHOSEN == derived ]] || PORTS_CHOSEN=default
    return 0
  fi
  base=$(derived_block "$@") ||
    die "found no free ports in $BLOCK_TRIES blocks above $BLOCK_FIRST; set STACK_PG_PORT, STACK_PGBOUNCER_PORT and STACK_REDIS_PORT"
  for var; do set_port_of_var "$var" "$((base + $(block_offset_of_var "$var")))"; done
  PORTS_CHOSEN=derived
}

saved_port() {
  local value
  [[ -r $PORTS_FILE ]] || return 1
  value=$(sed -n "s/^$1=\([0-9][0-9]*\)\$/\1/p" "$PORTS_FILE" | tail -n1)
  [[ -n $value ]] && printf '%s\n' "$value"
}

# Pure: sets every port from its variable, the ports file or a fresh choice, without writing anything (so `env`
# and `status` before the first `up` show what `up` would choose). Needs resolve_stack_dir first.
resolve_ports() {
  local var value missing=()
  PORTS_FILE=$STACK_DIR/ports
  PORTS_CHOSEN=""
  CHOSEN_VARS=()
  for var in "${PORT_VARS[@]}"; do
    if is_explicit "$var"; then
      value=${!var}
      validate_port_value "$var" "$value"
    elif ! value=$(saved_port "$var"); then
      value=""
      missing+=("$var")
    fi
    set_port_of_var "$var" "$value"
  done
  if ((${#missing[@]})); then choose_ports "${missing[@]}"; fi
  validate_ports
}

stack_runs_anything() {
  local svc port
  for svc in "${SERVICES[@]}" replica; do
    live_pid "$svc" >/dev/null && return 0
  done
  for port in $(cluster_node_ports); do
    live_pid "cluster-$port" >/dev/null && return 0
  done
  return 1
}

save_ports() {
  local var content tmp
  content='# The ports this stack last started on: written by scripts/stack.sh, read by all its commands. STACK_*_PORT'$'\n'
  content+='# variables override them; delete this file while the stack is down to have the next start choose again.'$'\n'
  for var in "${PORT_VARS[@]}"; do content+="$var=$(port_of_var "$var")"$'\n'; done
  if [[ -r $PORTS_FILE && "$(<"$PORTS_FILE")"$'\n' == "$content" ]]; then return 0; fi
  tmp=$PORTS_FILE.tmp.$$
  printf '%s' "$content" >"$tmp"
  mv -f "$tmp" "$PORTS_FILE"
}

# "postgres 61432, pgbouncer 62432, cluster 57001-57006" for variables "$@".
describe_ports() {
  local var port out=()
  for var; do
    port=$(port_of_var "$var")
    if [[ $var == STACK_REDIS_CLUSTER_PORT ]]; then
      out+=("cluster $port-$((port + $(cluster_size) - 1))")
    else
      out+=("$(service_of_var "$var") $port")
    fi
  done
  local IFS=,
  printf '%s\n' "${out[*]}" | sed 's/,/, /g'
}

# Dies with the one message a user needs when a port of variable $1 is held by another process.
require_port() {
  local var=$1 p svc
  svc=$(service_of_var "$var")
  for p in $(ports_of_var "$var" "$(port_of_var "$var")"); do
    port_available "$var" "$p" && continue
    case $svc in
      postgres | pgbouncer | redis | replica) ensure_port_free "$svc" ;;
      *) die "port $p on 127.0.0.1 (wanted by a cluster node) is already in use by another process; set $var to a free port" ;;
    esac
  done
}

# With the lock held, before starting the services behind variables "$@": a saved (not explicit) port that
# another process holds now is chosen again, for the whole stack when none of it runs, else for an idle extra
# (replica, cluster) alone; a port set explicitly, or a running service's port, cannot move, so a stranger on it
# ends the start here with a clear message. Then saves the ports and says which were chosen just now.
settle_ports() {
  local var p stale=() auto=()
  for var; do
    is_explicit "$var" && continue
    for p in $(ports_of_var "$var" "$(port_of_var "$var")"); do
      if ! port_available "$var" "$p"; then
        stale+=("$var")
        break
      fi
    done
  done
  if ((${#stale[@]})); then
    if ! stack_runs_anything; then
      for var in "${PORT_VARS[@]}"; do
        is_explicit "$var" || auto+=("$var")
      done
    else
      for var in "${stale[@]}"; do
        [[ $var == STACK_PG_REPLICA_PORT || $var == STACK_REDIS_CLUSTER_PORT ]] && auto+=("$var")
      done
    fi
    if ((${#auto[@]})); then
      log "saved port(s) of $(describe_ports "${stale[@]}") now held by another process; choosing again"
      for var in "${auto[@]}"; do set_port_of_var "$var" ""; done
      choose_ports "${auto[@]}"
      validate_ports
    fi
  fi
  for var; do require_port "$var"; done
  save_ports
  case $PORTS_CHOSEN in
    default)
      log "ports: $(describe_ports "${CHOSEN_VARS[@]}") (the defaults); saved in $PORTS_FILE" ;;
    derived)
      log "a default port is held by another process (another clone's stack?), so this stack uses ports derived from its folder: $(describe_ports "${CHOSEN_VARS[@]}"); saved in $PORTS_FILE" ;;
  esac
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

# As the superuser, straight to PostgreSQL (never through PgBouncer, which does not list it).
psql_super() {
  local port=$1 db=$2
  shift 2
  PGCONNECT_TIMEOUT=3 "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$SUPER_USER" -d "$db" "$@"
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

init_postgres() {
  [[ -f $PG_DATA/PG_VERSION ]] && return 0
  [[ -e $PG_DATA ]] && die "$PG_DATA exists but holds no cluster (interrupted initdb?); move it away and rerun"
  local initlog=$STACK_DIR/log/initdb.log
  log "initialising PostgreSQL cluster in $PG_DATA"
  if ! run_as "$INITDB" -D "$PG_DATA" -U "$SUPER_USER" --auth=trust -E UTF8 --locale=C.UTF-8 >"$initlog" 2>&1; then
    # C.UTF-8 is missing on older macOS/glibc; plain C still gives UTF8 storage.
    log "initdb with --locale=C.UTF-8 failed, retrying with --locale=C"
    rm -rf "$PG_DATA"
    run_as "$INITDB" -D "$PG_DATA" -U "$SUPER_USER" --auth=trust -E UTF8 --locale=C >>"$initlog" 2>&1 ||
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

pg_ready() { "$PG_ISREADY" -q -h 127.0.0.1 -p "$PG_PORT" -U "$SUPER_USER" -d postgres; }

# A cluster made before the roles were split has the migrator `ledger` as its bootstrap superuser, which owns the
# system catalogs and cannot be demoted: such a stack folder has to be made anew.
check_cluster_roles() {
  local bootstrap
  bootstrap=$(PGCONNECT_TIMEOUT=3 "$PSQL" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$SUPER_USER" -d postgres -tAc \
    'select rolname from pg_roles where oid = 10' 2>/dev/null) || bootstrap=""
  [[ $bootstrap == "$SUPER_USER" ]] ||
    die "the PostgreSQL cluster in $PG_DATA was initialised with '${bootstrap:-another role}' as its superuser, not '$SUPER_USER'; it predates the database roles of sql/bootstrap.sql. Make the stack anew: bash scripts/stack.sh down && rm -rf $STACK_DIR"
}

ensure_databases() {
  local db exists
  check_cluster_roles
  for db in "${DATABASES[@]}"; do
    exists=$(psql_super "$PG_PORT" postgres -tAc "select 1 from pg_database where datname = '$db'")
    if [[ $exists != 1 ]]; then
      log "creating database $db"
      psql_super "$PG_PORT" postgres -c "create database \"$db\""
    fi
    # Roles, ownership, privileges and extensions (idempotent). Trust auth on loopback: the logins need no
    # password here (compose and Kubernetes give them one).
    psql_super "$PG_PORT" "$db" -f "$PROJECT/sql/bootstrap.sql" >/dev/null
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

# The one source of PgBouncer's pooling settings, shared with compose.yaml (which mounts it as is) and
# deploy/k8s/pgbouncer-configmap.yaml (a copy that test/deploy/pgbouncer-settings.test.ts holds to it).
readonly PGBOUNCER_SOURCE=$PROJECT/deploy/pgbouncer/pgbouncer.ini
readonly SHARED_BEGIN=';; >>> shared pooling settings'
readonly SHARED_END=';; <<< shared pooling settings'

# The source's block of shared settings, verbatim (comments included). Fails unless the file holds exactly one
# such block, with at least one setting and no section header in it.
shared_pgbouncer_settings() {
  [[ -r $PGBOUNCER_SOURCE ]] || die "$PGBOUNCER_SOURCE is missing; it holds PgBouncer's pooling settings"
  awk -v begin="$SHARED_BEGIN" -v end="$SHARED_END" '
    index($0, begin) == 1 { if (state != 0) bad = 1; state = 1; next }
    index($0, end) == 1 { if (state != 1) bad = 1; state = 2; next }
    state == 1 {
      if ($0 ~ /^[ \t]*\[/) bad = 1
      if ($0 ~ /^[ \t]*[a-z_]+[ \t]*=/) settings++
      print
    }
    END { if (bad || state != 2 || settings == 0) exit 2 }' "$PGBOUNCER_SOURCE"
}

# The local pgbouncer.ini: the shared settings copied verbatim, plus only what is local (listen address and port,
# trust authentication on 127.0.0.1, socket/pid/log paths in the stack folder, the local PostgreSQL as target).
render_pgbouncer_conf() {
  local dir=$STACK_DIR/pgbouncer shared
  shared=$(shared_pgbouncer_settings) ||
    die "$PGBOUNCER_SOURCE needs exactly one block of settings between a '$SHARED_BEGIN' line and a '$SHARED_END' line"
  cat <<EOF
;; Generated by scripts/stack.sh on every start of pgbouncer; edits are overwritten. The pooling settings are
;; copied from deploy/pgbouncer/pgbouncer.ini; only the local ones before them are this script's own.
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $STACK_DIR/run
;; Loopback only. auth_type=trust still requires the user to be listed in auth_file.
auth_type = trust
auth_file = $dir/userlist.txt
;; The admin console, for this script's readiness check and \`npm run diagnose\`.
admin_users = $DB_USER
stats_users = $DB_USER
pidfile = $STACK_DIR/run/pgbouncer.pid
logfile = $(logfile_of pgbouncer)

$SHARED_BEGIN (from deploy/pgbouncer/pgbouncer.ini)
$shared
$SHARED_END
EOF
}

write_pgbouncer_conf() {
  local dir=$STACK_DIR/pgbouncer conf
  conf=$(render_pgbouncer_conf) || exit 1
  printf '"%s" ""\n' "$DB_USER" "$API_USER" >"$dir/userlist.txt"
  printf '%s\n' "$conf" >"$dir/pgbouncer.ini"
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
    # A stack from before the API role existed: its auth file learns the user (PgBouncer re-reads it on SIGHUP).
    if ! grep -q "\"$API_USER\"" "$STACK_DIR/pgbouncer/userlist.txt" 2>/dev/null; then
      write_pgbouncer_conf
      kill -HUP "$pid"
    fi
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
# Streaming replica (optional): `replica up|down|status|env`
# ---------------------------------------------------------------------------

validate_replica_port() {
  validate_port_value STACK_PG_REPLICA_PORT "$REPLICA_PORT"
  [[ $REPLICA_PORT != "$PG_PORT" && $REPLICA_PORT != "$PGB_PORT" && $REPLICA_PORT != "$REDIS_PORT" ]] ||
    die "STACK_PG_REPLICA_PORT must differ from the stack's other ports"
}

replica_ready() {
  [[ $(psql_at "$REPLICA_PORT" postgres -tAc 'select pg_is_in_recovery()') == t ]]
}

# The replica's own settings: everything else (pg_hba, postgresql.conf with its include_dir) comes from the
# primary through pg_basebackup. initdb's pg_hba already trusts replication connections from 127.0.0.1, and
# PostgreSQL 15's defaults (wal_level = replica, max_wal_senders = 10) let the primary stream without a restart.
write_replica_conf() {
  mkdir -p "$REPLICA_DATA/conf.d"
  cat >"$REPLICA_DATA/conf.d/ledger-stack.conf" <<EOF
# Generated by scripts/stack.sh (replica) on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $REPLICA_PORT
unix_socket_directories = '${STACK_DIR//\'/\'\'}/run'
max_connections = 100
shared_buffers = 128MB
shared_preload_libraries = 'pg_stat_statements'
hot_standby = on
# Tell the primary which rows replica queries still need, so vacuum does not cancel them (SQLSTATE 40001).
hot_standby_feedback = on
EOF
  if ((IS_ROOT)); then
    chown -R "$SVC_USER:" "$REPLICA_DATA/conf.d"
  fi
}

start_replica() {
  local pid running_port basebackup
  live_pid postgres >/dev/null || die "postgres (the primary) is not running; run: bash scripts/stack.sh up"
  if pid=$(live_pid replica); then
    running_port=$(sed -n 4p "$REPLICA_DATA/postmaster.pid")
    [[ $running_port == "$REPLICA_PORT" ]] ||
      die "the replica (pid $pid) is running on port $running_port but STACK_PG_REPLICA_PORT is $REPLICA_PORT; run: bash scripts/stack.sh replica down"
    log "replica already running (pid $pid)"
  else
    ensure_port_free replica
    if [[ ! -f $REPLICA_DATA/standby.signal ]]; then
      basebackup=$(pg_tool pg_basebackup) || die "pg_basebackup not found (it ships with the PostgreSQL server package)"
      rm -rf "$REPLICA_DATA"
      log "cloning the primary (127.0.0.1:$PG_PORT) into $REPLICA_DATA with pg_basebackup"
      run_as "$basebackup" -h 127.0.0.1 -p "$PG_PORT" -U "$SUPER_USER" -D "$REPLICA_DATA" \
        --write-recovery-conf --wal-method=stream --checkpoint=fast >"$(logfile_of replica-basebackup)" 2>&1 || {
        tail -n 30 "$(logfile_of replica-basebackup)" >&2
        rm -rf "$REPLICA_DATA"
        die "pg_basebackup failed"
      }
    fi
    write_replica_conf
    log "starting the replica on 127.0.0.1:$REPLICA_PORT (streaming from :$PG_PORT)"
    run_as "$PG_CTL" -D "$REPLICA_DATA" -l "$(logfile_of replica)" -w -t "$READY_TIMEOUT" start >&2 || {
      tail_log replica
      die "the replica failed to start"
    }
  fi
  wait_ready replica replica_ready
}

# A replica is disposable: stopping it also deletes it, so the next `replica up` starts from a fresh clone and
# never from data that no longer matches the primary.
stop_replica() {
  local pid
  if pid=$(live_pid replica); then
    log "stopping the replica (pid $pid)"
    run_as "$PG_CTL" -D "$REPLICA_DATA" -m fast -w -t "$STOP_TIMEOUT" stop >&2 ||
      run_as "$PG_CTL" -D "$REPLICA_DATA" -m immediate -w -t "$STOP_TIMEOUT" stop >&2 || true
    wait_gone replica "$pid" || {
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone replica "$pid" || die "could not stop the replica (pid $pid)"
    }
  fi
  rm -rf "$REPLICA_DATA"
}

cmd_replica() {
  local pid
  case ${1:-} in
    up)
      prepare_for_start STACK_PG_REPLICA_PORT
      validate_replica_port
      start_replica
      printf 'replica up: 127.0.0.1:%s streaming from 127.0.0.1:%s\n' "$REPLICA_PORT" "$PG_PORT"
      ;;
    down)
      if prepare_for_stop; then stop_replica; fi
      log "replica down"
      ;;
    status)
      resolve
      validate_replica_port
      if pid=$(live_pid replica); then
        printf '%-10s %-8s pid=%-8s port=%s\n' replica running "$pid" "$REPLICA_PORT"
      else
        printf '%-10s %-8s pid=%-8s port=%s\n' replica stopped - "$REPLICA_PORT"
      fi
      ;;
    env)
      resolve
      validate_replica_port
      printf 'DATABASE_REPLICA_URL=%s\n' "postgres://$API_USER@127.0.0.1:$REPLICA_PORT/ledger"
      ;;
    *)
      usage
      exit 2
      ;;
  esac
}

# ---------------------------------------------------------------------------
# Redis Cluster (optional): `cluster up|down|status|env`
# ---------------------------------------------------------------------------

# 3 masters, with a replica each unless STACK_REDIS_CLUSTER_REPLICAS=0 (validate_cluster_ports rejects other values).
cluster_size() { if [[ $CLUSTER_REPLICAS == 0 ]]; then echo 3; else echo 6; fi; }

cluster_ports() {
  local i n
  n=$(cluster_size)
  for ((i = 0; i < n; i++)); do echo $((10#$CLUSTER_PORT + i)); done
}

# The cluster bus needs a port of its own; Redis's default (port + 10000) does not exist above 55535.
bus_port_of() {
  if (($1 + 10000 <= 65535)); then echo $(($1 + 10000)); else echo $(($1 - 10000)); fi
}

validate_cluster_ports() {
  local port
  [[ $CLUSTER_REPLICAS =~ ^[01]$ ]] || die "STACK_REDIS_CLUSTER_REPLICAS must be 0 or 1"
  validate_port_value STACK_REDIS_CLUSTER_PORT "$CLUSTER_PORT"
  ((10#$CLUSTER_PORT + $(cluster_size) - 1 <= 65535 && 10#$CLUSTER_PORT > 10000)) ||
    die "STACK_REDIS_CLUSTER_PORT=$CLUSTER_PORT must leave room for $(cluster_size) nodes and lie above 10000"
  for port in $(cluster_ports); do
    [[ $port != "$PG_PORT" && $port != "$PGB_PORT" && $port != "$REDIS_PORT" && $port != "$REPLICA_PORT" ]] ||
      die "the cluster's ports ($CLUSTER_PORT and up) overlap the stack's other ports"
  done
}

cli_at() { "$REDIS_CLI" -h 127.0.0.1 -p "$1" "${@:2}"; }

cluster_node_ready() { [[ $(cli_at "$1" ping 2>/dev/null) == PONG ]]; }

cluster_state_ok() {
  local port
  for port in $(cluster_ports); do
    cli_at "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

wait_cluster_ok() {
  local i
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    cluster_state_ok && return 0
    sleep 0.1
  done
  die "the Redis Cluster did not reach cluster_state:ok within ${READY_TIMEOUT}s (logs: $CLUSTER_DIR/*/redis.log)"
}

start_cluster_node() {
  local port=$1 dir=$CLUSTER_DIR/$1 bus pid
  bus=$(bus_port_of "$port")
  if pid=$(live_pid "cluster-$port"); then
    log "cluster node :$port already running (pid $pid)"
    return 0
  fi
  port_in_use "$port" && die "port $port on 127.0.0.1 (wanted by a cluster node) is already in use; set STACK_REDIS_CLUSTER_PORT"
  port_in_use "$bus" && die "port $bus on 127.0.0.1 (cluster bus of :$port) is already in use; set STACK_REDIS_CLUSTER_PORT"
  mkdir -p "$dir"
  if ((IS_ROOT)); then
    chown "$SVC_USER:" "$CLUSTER_DIR" "$dir"
  fi
  run_as "$REDIS_SERVER" --daemonize yes --bind 127.0.0.1 --port "$port" \
    --cluster-enabled yes --cluster-port "$bus" --cluster-config-file "$dir/nodes.conf" \
    --cluster-node-timeout 5000 --save "" --appendonly no --dir "$dir" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --unixsocket "" >&2 || {
    tail -n 30 "$dir/redis.log" >&2 || true
    die "cluster node :$port failed to start"
  }
}

# Fails early when the daemon is gone: redis-server --daemonize returns before it binds its port.
wait_cluster_node() {
  local port=$1 i
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    cluster_node_ready "$port" && return 0
    if ((i >= 20)) && ! live_pid "cluster-$port" >/dev/null; then
      return 1
    fi
    sleep 0.1
  done
  return 1
}

start_cluster() {
  local port nodes=() assigned
  for port in $(cluster_ports); do
    start_cluster_node "$port"
    nodes+=("127.0.0.1:$port")
  done
  for port in $(cluster_ports); do
    wait_cluster_node "$port" && continue
    # These ports sit in Linux's ephemeral range, so a passing outgoing connection can hold one for a moment:
    # one more try before giving up.
    log "cluster node :$port did not come up; retrying once"
    start_cluster_node "$port"
    wait_cluster_node "$port" || {
      tail -n 20 "$CLUSTER_DIR/$port/redis.log" >&2 || true
      die "cluster node :$port did not answer within ${READY_TIMEOUT}s"
    }
  done
  if cluster_state_ok; then
    log "redis cluster already formed"
    return 0
  fi
  assigned=$(cli_at "$CLUSTER_PORT" cluster info | tr -d '\r' | sed -n 's/^cluster_slots_assigned:\([0-9]*\)$/\1/p')
  if [[ $assigned != 0 ]]; then
    # Formed earlier and still settling (or a node restarted): wait, do not form it twice.
    wait_cluster_ok
    return 0
  fi
  log "forming a Redis Cluster of ${#nodes[@]} nodes (replicas per master: $CLUSTER_REPLICAS)"
  "$REDIS_CLI" --cluster create "${nodes[@]}" --cluster-replicas "$CLUSTER_REPLICAS" --cluster-yes \
    >"$CLUSTER_DIR/create.log" 2>&1 || {
    tail -n 30 "$CLUSTER_DIR/create.log" >&2
    die "redis-cli --cluster create failed"
  }
  wait_cluster_ok
}

# The cluster holds nothing persistent: stopping it also deletes its folder (nodes.conf included), so the next
# `cluster up` forms a fresh one.
# Goes by the node folders that exist, not by STACK_REDIS_CLUSTER_PORT, so a plain `down` also finds a cluster
# that was started on other ports.
cluster_node_ports() {
  local dir
  for dir in "$CLUSTER_DIR"/*/; do
    dir=${dir%/}
    [[ ${dir##*/} =~ ^[0-9]+$ ]] && echo "${dir##*/}"
  done
  return 0
}

stop_cluster() {
  local port pid
  [[ -d $CLUSTER_DIR ]] || return 0
  for port in $(cluster_node_ports); do
    if pid=$(live_pid "cluster-$port"); then
      log "stopping cluster node :$port (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for port in $(cluster_node_ports); do
    if pid=$(live_pid "cluster-$port"); then
      wait_gone "cluster-$port" "$pid" || {
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "cluster-$port" "$pid" || die "could not stop cluster node :$port (pid $pid)"
      }
    fi
  done
  rm -rf "$CLUSTER_DIR"
}

cmd_cluster() {
  local port pid
  case ${1:-} in
    up)
      prepare_for_start STACK_REDIS_CLUSTER_PORT
      validate_cluster_ports
      start_cluster
      printf 'cluster up: %s nodes from 127.0.0.1:%s\n' "$(cluster_size)" "$CLUSTER_PORT"
      ;;
    down)
      if prepare_for_stop; then stop_cluster; fi
      log "cluster down"
      ;;
    status)
      resolve
      validate_cluster_ports
      for port in $(cluster_ports); do
        if pid=$(live_pid "cluster-$port"); then
          printf '%-10s %-8s pid=%-8s port=%s\n' cluster running "$pid" "$port"
        else
          printf '%-10s %-8s pid=%-8s port=%s\n' cluster stopped - "$port"
        fi
      done
      ;;
    env)
      resolve
      validate_cluster_ports
      printf 'REDIS_CLUSTER_NODES=%s\n' "$(cluster_ports | sed 's/^/127.0.0.1:/' | paste -sd, -)"
      ;;
    *)
      usage
      exit 2
      ;;
  esac
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

# The local stack's JWT secret: random, generated once into the stack folder (never committed anywhere), so the
# tokens of `npm start` survive restarts and every process of this checkout signs with the same key. The
# alphabet (base64url) needs no quoting; noclobber makes the creation exclusive, so two runs cannot race.
readonly JWT_SECRET_FILE_NAME=jwt-secret
ensure_jwt_secret() {
  local file=$STACK_DIR/$JWT_SECRET_FILE_NAME secret
  [[ -s $file ]] && return 0
  secret=$(head -c 48 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_')
  ((${#secret} >= 32)) || die "could not generate a JWT secret from /dev/urandom"
  if (umask 077 && set -o noclobber && printf '%s\n' "$secret" >"$file") 2>/dev/null; then
    log "generated the local JWT secret ($file)"
  fi
  chmod 600 "$file"
}

cmd_env() {
  local secret_file=$STACK_DIR/$JWT_SECRET_FILE_NAME
  printf 'DATABASE_URL=%s\n' "postgres://$API_USER@127.0.0.1:$PGB_PORT/ledger"
  printf 'DATABASE_DIRECT_URL=%s\n' "postgres://$DB_USER@127.0.0.1:$PG_PORT/ledger"
  # For the test runner and benchmarks, which create databases of their own (scripts/local-stack.ts).
  printf 'DATABASE_ADMIN_URL=%s\n' "postgres://$SUPER_USER@127.0.0.1:$PG_PORT/postgres"
  printf 'REDIS_URL=%s\n' "redis://127.0.0.1:$REDIS_PORT"
  # Single quotes rather than printf %q: still eval-safe, and dotenv-style
  # parsers (scripts/local-stack.ts) only know how to strip quotes.
  if [[ $STACK_DIR =~ ^[A-Za-z0-9_./:@+-]+$ ]]; then
    printf 'STACK_DIR=%s\n' "$STACK_DIR"
  else
    printf "STACK_DIR='%s'\n" "${STACK_DIR//\'/\'\\\'\'}"
  fi
  if [[ -r $secret_file ]]; then printf 'JWT_SECRET=%s\n' "$(<"$secret_file")"; fi
}

# Everything that may create or start something goes through here; "$@" are the port variables of what is
# about to start.
prepare_for_start() {
  resolve
  ensure_bins
  ensure_service_user
  # The service user may only exist now, which can change the answer.
  resolve_stack_dir
  prepare_stack_dir
  take_lock
  # Again under the lock: a start running in parallel may just have saved its choice.
  resolve_ports
  settle_ports "$@"
}

# Stopping never installs anything; pg_ctl is used when available.
prepare_for_stop() {
  resolve
  [[ -d $STACK_DIR ]] || return 1
  resolve_bins
  take_lock
}

# Where the stack lives and which ports it uses; writes nothing.
resolve() {
  resolve_stack_dir
  resolve_ports
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
  case $cmd in
    up)
      (($# == 1)) || {
        usage
        exit 2
      }
      prepare_for_start "${MAIN_PORT_VARS[@]}"
      ensure_jwt_secret
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
        # The optional extras first (the replica streams from postgres); nothing to do when they never ran.
        stop_cluster
        if [[ -d $REPLICA_DATA ]]; then stop_replica; fi
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
        prepare_for_start "$(port_var_of "$svc")"
        start_service "$svc"
      else
        if prepare_for_stop; then
          stop_service "$svc"
        fi
        if [[ $cmd == restart ]]; then
          prepare_for_start "$(port_var_of "$svc")"
          start_service "$svc"
        fi
      fi
      ;;
    status)
      resolve
      cmd_status
      ;;
    replica | cluster)
      (($# == 2)) || {
        usage
        exit 2
      }
      "cmd_$cmd" "$2"
      ;;
    env)
      resolve
      cmd_env
      ;;
    pgbouncer-conf)
      resolve
      render_pgbouncer_conf
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
