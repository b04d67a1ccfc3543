# Shared by deploy/dev/up and deploy/dev/down: where the dev fleet lives and how its processes
# are recognised. Sourced, not run.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../fleet/proc.sh
source "$repo/deploy/fleet/proc.sh"
# A second fleet beside a developer's (the test of up and down does this) sets its own state
# dir, ports, host ids and engine-per-host fleet name; the defaults are the dev fleet's.
#   BERTH_DEV_DIR          state dir (default <repo>/.dev)
#   BERTH_DEV_PORT_BASE    etcd BASE and BASE+1, API BASE+2, registry BASE+3, agents BASE+10+N,
#                          agents' metrics BASE+14+N
#   BERTH_DEV_HOST_PREFIX  host ids PREFIX-1..3 (default host)
#   BERTH_DEV_FLEET        deploy/fleet/hosts fleet name (default dev)
#   BERTH_DEV_FLEET_INDEX  its subnet index, 10.213.INDEX.0/24 (default 0; another fleet
#                          up at once needs another: 1 is the tests', so 2..15)
#   BERTH_DEV_BIN_DIR      where berth-control-plane and berth-agent are (default target/debug)
#   BERTH_DEV_SKIP_BUILD=1 use what is installed and built; install and build nothing
dev=${BERTH_DEV_DIR:-$repo/.dev}
logs=$dev/logs
run=$dev/run
bin_dir=${BERTH_DEV_BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/debug}
skip_build=${BERTH_DEV_SKIP_BUILD:-}

if [[ -n ${BERTH_DEV_PORT_BASE:-} ]]; then
	port_base=$BERTH_DEV_PORT_BASE
	etcd_client=127.0.0.1:$port_base
	etcd_peer=127.0.0.1:$((port_base + 1))
	api=127.0.0.1:$((port_base + 2))
	grpc=127.0.0.1:$((port_base + 3))
	agent_port_base=$((port_base + 10))
	metrics_port_base=$((port_base + 14))
else
	etcd_client=127.0.0.1:2479
	etcd_peer=127.0.0.1:2480
	api=127.0.0.1:3000
	grpc=127.0.0.1:3001
	# host-N listens on 127.0.0.1:$((agent_port_base + N)).
	agent_port_base=7100
	# host-N serves Prometheus metrics on 127.0.0.1:$((metrics_port_base + N)) (docs/operations.md).
	metrics_port_base=9100
fi
host_prefix=${BERTH_DEV_HOST_PREFIX:-host}
hosts=("$host_prefix-1" "$host_prefix-2" "$host_prefix-3")

# --engine-per-host: the hosts are deploy/fleet/hosts' fleet "dev" on subnet index 0
# (10.213.0.0/24), each with its own engine; the agents run in the hosts' namespaces and reach
# the control plane's registry at the fleet's gateway address. The mode of the fleet in .dev
# is kept in $mode_file.
fleet_hosts=$repo/deploy/fleet/hosts
fleet=${BERTH_DEV_FLEET:-dev}
fleet_index=${BERTH_DEV_FLEET_INDEX:-0}
mode_file=$dev/mode
# An agent listens on this port of its host's address in that mode, and serves its metrics
# on agent_metrics_port.
agent_port=7100
agent_metrics_port=9101

# Every process of the fleet, in start order; down stops them in reverse.
components=(etcd control-plane "${hosts[@]/#/agent-}")

# The command that stops this fleet, as one line to copy: deploy/dev/down behind every
# BERTH_DEV_* variable this run was given (shell-quoted), so a second fleet's stop command does
# not take down the default one.
down_command() {
	local v
	for v in $(compgen -v BERTH_DEV_); do printf '%s=%q ' "$v" "${!v}"; done
	printf '%s/deploy/dev/down\n' "$repo"
}

log() { printf '[dev] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

pid_file() { printf '%s/%s.pid\n' "$run" "$1"; }
log_file() { printf '%s/%s.log\n' "$logs" "$1"; }

# The data directory a component is started with: unique to it, so it identifies the process
# when its pid file is gone.
data_dir() {
	case $1 in
	etcd) printf '%s\n' "$dev/etcd" ;;
	control-plane) printf '%s\n' "$dev/control-plane" ;;
	agent-*) printf '%s\n' "$dev/agents/${1#agent-}" ;;
	esac
}

# The programs a component's process may be: nsenter until it has exec'd the agent.
programs() {
	case $1 in
	etcd) printf '%s\n' etcd ;;
	control-plane) printf '%s\n' berth-control-plane ;;
	agent-*) printf '%s\n' berth-agent nsenter ;;
	esac
}

# Prints the pid of COMPONENT if it runs, and fails otherwise. Its pid file is believed when
# the start time it records matches (deploy/fleet/proc.sh), which holds from the fork on, so a
# process just started and not yet exec'd is never taken for a stale one. Without a valid pid
# file, a process started with COMPONENT's data directory is still this fleet's (a run that
# died before recording it, a pid file of the old format): it is taken back, so that a rerun
# neither starts a second one nor finds the port taken by its own leftover.
live_pid() {
	local file pids progs
	file=$(pid_file "$1")
	pidfile_live "$file" && return 0
	mapfile -t progs < <(programs "$1")
	mapfile -t pids < <(pids_with_arg --data-dir "$(data_dir "$1")" "${progs[@]}")
	if ((${#pids[@]} > 0)); then
		pidfile_write "$file" "${pids[0]}"
		log "$1 runs without a valid pid file; recorded its pid ${pids[0]}"
		printf '%s\n' "${pids[0]}"
		return 0
	fi
	rm -f "$file"
	return 1
}
