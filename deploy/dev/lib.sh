# Shared by deploy/dev/up and deploy/dev/down: where the dev fleet lives and how its processes
# are recognised. Sourced, not run.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dev=$repo/.dev
logs=$dev/logs
run=$dev/run
bin_dir=${CARGO_TARGET_DIR:-$repo/target}/debug

etcd_client=127.0.0.1:2479
etcd_peer=127.0.0.1:2480
api=127.0.0.1:3000
grpc=127.0.0.1:3001
hosts=(host-1 host-2 host-3)
# host-N listens on 127.0.0.1:$((agent_port_base + N)).
agent_port_base=7100

# Every process of the fleet, in start order; down stops them in reverse.
components=(etcd control-plane "${hosts[@]/#/agent-}")

log() { printf '[dev] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

pid_file() { printf '%s/%s.pid\n' "$run" "$1"; }
log_file() { printf '%s/%s.log\n' "$logs" "$1"; }

# The word that must appear in a live process's command line for its pid file to be believed:
# a pid file can outlive its process, and the kernel may hand the pid to something else.
signature() {
	case $1 in
	etcd) printf '%s\n' "--data-dir $dev/etcd" ;;
	control-plane) printf '%s\n' "--data-dir $dev/control-plane" ;;
	agent-*) printf '%s\n' "--data-dir $dev/agents/${1#agent-}" ;;
	esac
}

# Prints the pid of COMPONENT if its pid file names a live process that is really it;
# removes a stale pid file and fails otherwise.
live_pid() {
	local file pid cmdline
	file=$(pid_file "$1")
	[[ -f $file ]] || return 1
	pid=$(<"$file")
	if [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]]; then
		cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
		if [[ $cmdline == *"$(signature "$1")"* ]]; then
			printf '%s\n' "$pid"
			return 0
		fi
	fi
	rm -f "$file"
	return 1
}
