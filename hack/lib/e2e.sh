# shellcheck shell=bash
# What hack/compose-e2e.sh and hack/worker-e2e.sh share, sourced after `cd` to the repo's root
# with E2E set to the script's name (its log prefix):
#   log/step/fail           progress lines with the run's seconds; a step prints the previous one's
#   step_summary            each step's time, by its first word ("1/7 25 s, 2/7 0 s")
#   iptables_rules          the host's rules (v4 and v6), without counters, sorted
#   stop_pid PID            SIGTERM, then SIGKILL after 30 s
#   free_subnets N [top]    N /24s of 198.19.0.0/16 that no route covers, from the bottom (or top)
#   setup_env               make setup's virtualenv and control-plane binaries (hack/setup.sh when
#                           one is missing): PY, and PATH with the virtualenv's bin (kubectl)
#   start_controlplane DIR LOG [ADVERTISE_IP NODE NODE_IP]
#                           hack/lib/controlplane.py in the background (its pid in cp_pid, for the
#                           caller's cleanup), waits for DIR/ready (180 s)
started=$SECONDS
step_t0=$SECONDS
log() { printf '[%s %(%H:%M:%S)T %4ss] %s\n' "$E2E" -1 "$((SECONDS - started))" "$*" >&2; }
step_times=()
step() {
  [ -z "${step_name:-}" ] || step_times+=("$step_name $((SECONDS - step_t0)) s")
  log "$* (previous step: $((SECONDS - step_t0)) s)"
  step_t0=$SECONDS
  step_name=${1%% *}
}
# Each step's time so far: "1/7 25 s, 2/7 0 s, ..., teardown 11 s".
step_summary() {
  local times=("${step_times[@]}") all
  [ -z "${step_name:-}" ] || times+=("$step_name $((SECONDS - step_t0)) s")
  all=$(IFS=,; echo "${times[*]}")
  echo "${all//,/, }"
}
fail() { log "FAIL: $*"; exit 1; }

iptables_rules() {
  { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | sed '/^#/d; s/ \[[0-9]*:[0-9]*\]$//' | sort
}

stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
}

# make up's and the tests' namespaces take /28s and /30s of 198.18.0.0/15 at random, avoiding
# routed ones too; the Docker engine's pool is 198.19.192.0/18 (hack/images/dockerd.sh).
free_subnets() {
  python3 - "$@" <<'PY'
import ipaddress, json, subprocess, sys
routes = json.loads(subprocess.run(["ip", "-j", "route"], capture_output=True, text=True, check=True).stdout)
taken = [ipaddress.ip_network(r["dst"], strict=False) for r in routes if r.get("dst") not in (None, "default")]
nets = list(ipaddress.ip_network("198.19.0.0/16").subnets(new_prefix=24))
if sys.argv[2:] == ["top"]:
    nets.reverse()
free = [n for n in nets if not any(n.overlaps(t) for t in taken)]
print(*free[:int(sys.argv[1])])
PY
}

setup_env() {
  PY="$VMLET_CACHE/venv-py3.11/bin/python"
  if [ ! -x "$PY" ] || [ ! -x "$VMLET_CACHE/bin/kube-apiserver-${K8S_VERSION:-v1.34.4}" ]; then
    VMLET_SETUP=memory bash hack/setup.sh >/dev/null
  fi
  PATH="$VMLET_CACHE/venv-py3.11/bin:$PATH"
  command -v kubectl >/dev/null || fail "no kubectl (make setup links it into the virtualenv)"
}

start_controlplane() {
  local dir=$1 out=$2 t0=$SECONDS
  shift 2
  # This checkout's lib/localenv, whatever checkout the shared virtualenv was synced from.
  PYTHONPATH="$PWD/lib/localenv:$PWD/lib/api:$PWD/lib/contract${PYTHONPATH:+:$PYTHONPATH}" \
    setsid "$PY" hack/lib/controlplane.py "$dir" "$@" >"$out" 2>&1 </dev/null &
  cp_pid=$!
  until [ -f "$dir/ready" ]; do
    kill -0 "$cp_pid" 2>/dev/null || { tail -30 "$out" >&2; fail "the control plane did not start"; }
    [ $((SECONDS - t0)) -lt 180 ] || { tail -30 "$out" >&2; fail "the control plane is not up in 180 s"; }
    sleep 0.5
  done
  log "control plane at $(cat "$dir/ready") (pid $cp_pid) after $((SECONDS - t0)) s"
}
