# shellcheck shell=bash
# Shared shell functions for scripts/*.  Source it; do not run it.
#
#   start_dockerd DIR   start a private dockerd with all its state in DIR (socket DIR/docker.sock,
#                       data-root DIR/data-DRIVER, exec-root DIR/exec, an empty config file);
#                       storage drivers tried in order: $FB_STORAGE_DRIVERS (default
#                       "overlay2 vfs").  On success exports DOCKER_HOST=unix://DIR/docker.sock,
#                       FB_DOCKERD_PID, FB_DOCKERD_DIR and FB_DOCKERD_DRIVER.  Call it directly
#                       (not in $(...) or a pipeline): stop_dockerd must run in the same shell.
#   stop_dockerd        stop that dockerd by PID (TERM, then KILL after 30 s), then lazily unmount
#                       whatever is still mounted under its DIR, deepest first.  Safe to call twice.
#   umount_under DIR    lazily unmount every mount at or below DIR, deepest first.
#   engine_driver SOCK  print the storage driver of the engine on unix socket SOCK (GET /info);
#                       fails if nothing answers there.
#
# Needs root, dockerd (Debian: docker.io) and python3 (standard library only; no docker CLI).

FB_DOCKERD_PID=${FB_DOCKERD_PID:-}
FB_DOCKERD_DIR=${FB_DOCKERD_DIR:-}

fb_say() { printf '%s\n' "$*" >&2; }

# engine_driver SOCK: asks the engine over its unix socket, with a 5 s timeout.
engine_driver() {
  "${PYTHON:-python3}" - "$1" <<'EOF'
import json, socket, sys
try:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sys.argv[1])
    s.sendall(b"GET /info HTTP/1.0\r\nHost: docker\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if head.split(b" ", 2)[1] != b"200":
        sys.exit(1)
    print(json.loads(body)["Driver"])
except (OSError, ValueError, IndexError, KeyError):
    sys.exit(1)
EOF
}

umount_under() {
  local top=${1%/} m
  [ -n "$top" ] || return 0
  # /proc/mounts escapes blanks as \040; our temp dirs have none.  Reverse sort: children first.
  awk -v p="$top" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/mounts 2>/dev/null |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# _fb_kill_pid PID SECONDS: TERM, wait up to SECONDS, then KILL.  Returns once PID is gone.
_fb_kill_pid() {
  local pid=$1 secs=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  fb_say "lib.sh: pid $pid did not stop in ${secs}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
}

# _fb_try_dockerd DIR DRIVER: one attempt; 0 when the engine answers with that driver.
_fb_try_dockerd() {
  local dir=$1 drv=$2 sock=$1/docker.sock pid i got
  rm -rf "$dir/exec" "$sock" "$dir/dockerd.pid"
  "${DOCKERD:-dockerd}" --config-file "$dir/daemon.json" \
    --iptables=false --ip6tables=false --bridge=none \
    --storage-driver="$drv" --data-root "$dir/data-$drv" --exec-root "$dir/exec" \
    -H "unix://$sock" --pidfile "$dir/dockerd.pid" \
    </dev/null >"$dir/dockerd-$drv.log" 2>&1 &
  pid=$!
  FB_DOCKERD_PID=$pid
  for ((i = 0; i < 300; i++)); do   # 30 s
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true
      FB_DOCKERD_PID=""
      umount_under "$dir/data-$drv"
      return 1
    fi
    got=$(engine_driver "$sock" 2>/dev/null) || got=""
    if [ "$got" = "$drv" ]; then
      return 0
    fi
    sleep 0.1
  done
  fb_say "lib.sh: dockerd ($drv) did not answer within 30 s"
  stop_dockerd
  return 1
}

start_dockerd() {
  local dir=${1:?usage: start_dockerd DIR} drv
  if [ -n "$FB_DOCKERD_PID" ] && kill -0 "$FB_DOCKERD_PID" 2>/dev/null; then
    fb_say "lib.sh: a private dockerd (pid $FB_DOCKERD_PID) is already running"
    return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    fb_say "lib.sh: starting dockerd needs root"
    return 1
  fi
  if ! command -v "${DOCKERD:-dockerd}" >/dev/null 2>&1; then
    fb_say "lib.sh: ${DOCKERD:-dockerd} not found (Debian package docker.io; run scripts/setup)"
    return 1
  fi
  mkdir -p "$dir" || return 1
  dir=$(cd "$dir" && pwd) || return 1
  if [ $((${#dir} + 12)) -ge 108 ]; then   # sun_path limit, incl. /docker.sock and NUL
    fb_say "lib.sh: $dir is too long for a unix socket path; use a short dir under /tmp"
    return 1
  fi
  printf '{}\n' >"$dir/daemon.json"
  FB_DOCKERD_DIR=$dir
  for drv in ${FB_STORAGE_DRIVERS:-overlay2 vfs}; do
    if _fb_try_dockerd "$dir" "$drv"; then
      FB_DOCKERD_DRIVER=$drv
      DOCKER_HOST=unix://$dir/docker.sock
      export DOCKER_HOST FB_DOCKERD_PID FB_DOCKERD_DIR FB_DOCKERD_DRIVER
      return 0
    fi
    fb_say "lib.sh: dockerd with storage driver $drv did not start; last lines of its log:"
    tail -n 3 "$dir/dockerd-$drv.log" 2>/dev/null | sed 's/^/  /' >&2
  done
  return 1
}

stop_dockerd() {
  local pid=$FB_DOCKERD_PID dir=$FB_DOCKERD_DIR cpid
  if [ -n "$pid" ]; then
    _fb_kill_pid "$pid" 30
    wait "$pid" 2>/dev/null || true
  fi
  if [ -n "$dir" ]; then
    # dockerd stops its own containerd on TERM; after a KILL that child is left.  Only a pid
    # whose command line names our exec-root is ours.
    cpid=$(cat "$dir/exec/containerd/containerd.pid" 2>/dev/null) || cpid=""
    if [ -n "$cpid" ] && tr '\0' ' ' <"/proc/$cpid/cmdline" 2>/dev/null | grep -qF "$dir/"; then
      _fb_kill_pid "$cpid" 10
    fi
    umount_under "$dir"
  fi
  if [ -n "$dir" ] && [ "${DOCKER_HOST:-}" = "unix://$dir/docker.sock" ]; then
    unset DOCKER_HOST
  fi
  FB_DOCKERD_PID=""
  return 0
}
