# shellcheck shell=bash
# Process bookkeeping shared by deploy/fleet/hosts and deploy/dev: pid files that cannot be
# fooled by a process that has not exec'd yet, nor by a pid the kernel handed to someone else,
# and a way to find a process of ours whose pid file was lost. Sourced, not run.
#
# A pid file holds "PID START", START being the process's start time (field 22 of
# /proc/PID/stat, clock ticks since boot). Unlike the command line, the start time is fixed
# from the fork on: a child that has not exec'd its program yet already has it, and a later
# process given the same pid has another. So a pid file is believed exactly when
# /proc/PID/stat shows the same start time and the process is not a zombie; the command line
# is never consulted for that.

# proc_start_time PID: prints PID's start time; fails if there is no such process or it is a zombie.
proc_start_time() {
	local stat
	{ stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
	# Fields after the command name, which may itself hold spaces and parentheses.
	stat=${stat##*) }
	local -a f
	read -ra f <<<"$stat"
	[[ ${f[0]} != Z && ${f[0]} != X ]] || return 1
	printf '%s\n' "${f[19]}"
}

# pidfile_write FILE PID: records PID and its start time (call it right after forking PID).
pidfile_write() {
	local start
	start=$(proc_start_time "$2") || start=gone
	printf '%s %s\n' "$2" "$start" >"$1"
}

# pidfile_live FILE: prints the pid FILE records if that process still runs; fails otherwise
# (no file, a pid file of the old pid-only format, a dead process, a reused pid).
pidfile_live() {
	local pid='' start='' now
	[[ -f $1 ]] || return 1
	read -r pid start <"$1" || true
	[[ $pid =~ ^[0-9]+$ && $start =~ ^[0-9]+$ ]] || return 1
	now=$(proc_start_time "$pid") || return 1
	[[ $now == "$start" ]] || return 1
	printf '%s\n' "$pid"
}

# pids_with_arg NAME VALUE [PROGRAM...]: prints the pids of live processes whose arguments hold
# NAME followed by VALUE (or NAME=VALUE) and, when PROGRAMs are given, whose program (argv[0]'s
# base name) is one of them. This is for finding a process of ours whose pid file is gone; an
# argument like a data directory is unique to it.
pids_with_arg() {
	local name=$1 value=$2 f pid i prog p
	shift 2
	local -a argv
	for f in /proc/[0-9]*/cmdline; do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		[[ $pid != "$$" && $pid != "$BASHPID" ]] || continue
		mapfile -d '' -t argv 2>/dev/null <"$f" || continue
		((${#argv[@]} > 0)) || continue
		if (($# > 0)); then
			prog=${argv[0]##*/}
			for p in "$@"; do [[ $prog == "$p" ]] && break; done
			[[ $prog == "$p" ]] || continue
		fi
		for ((i = 1; i < ${#argv[@]}; i++)); do
			if [[ ${argv[i]} == "$name=$value" || (${argv[i]} == "$name" && ${argv[i + 1]:-} == "$value") ]]; then
				proc_start_time "$pid" >/dev/null && printf '%s\n' "$pid"
				break
			fi
		done
	done
}

# stop_pid PID GRACE: SIGTERM, then SIGKILL after GRACE seconds; returns once PID is gone.
stop_pid() {
	local pid=$1 grace=$2 start deadline
	start=$(proc_start_time "$pid") || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	deadline=$((SECONDS + grace))
	while [[ $(proc_start_time "$pid" 2>/dev/null) == "$start" ]] && ((SECONDS < deadline)); do sleep 0.2; done
	if [[ $(proc_start_time "$pid" 2>/dev/null) == "$start" ]]; then
		kill -KILL "$pid" 2>/dev/null || true
		while [[ $(proc_start_time "$pid" 2>/dev/null) == "$start" ]]; do sleep 0.1; done
	fi
	return 0
}
