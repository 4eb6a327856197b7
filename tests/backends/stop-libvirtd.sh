#!/usr/bin/env bash
# Stop what start-libvirtd.sh started and put /dev/kvm back as it was.
#
# Usage: stop-libvirtd.sh             (as root)
# Environment: PYCAPSTAN_LIBVIRTD_RUN_DIR, as for start-libvirtd.sh.
#
# Only the PIDs in the run directory's pidfiles are signalled, and only while the process
# there still has the expected name. Domains still running are reported, not touched (their
# qemu outlives libvirtd). The run directory is removed once everything in it is stopped.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run_dir="${PYCAPSTAN_LIBVIRTD_RUN_DIR:-/run/pycapstan-libvirtd}"

log() { echo "stop-libvirtd: $*"; }

[[ -d $run_dir ]] || { log "nothing was started (no $run_dir)"; exit 0; }

if [[ -s $run_dir/libvirtd.pid ]]; then
    domains="$(timeout -k 2 10 virsh -c qemu:///system list --name 2>/dev/null | sed '/^$/d' |
               tr '\n' ' ')"
    [[ -z $domains ]] || log "warning: domains still running (left alone): $domains"
fi

# running PID: the process exists and is not a zombie.
running() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n $state && $state != Z ]]
}

rc=0
# libvirtd first: virtlogd must outlive it while it closes domain logs.
for name in libvirtd virtlogd; do
    pidfile="$run_dir/$name.pid"
    [[ -s $pidfile ]] || continue
    pid="$(cat "$pidfile")"
    if ! [[ $pid =~ ^[0-9]+$ ]] || ! running "$pid" ||
       [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]]; then
        log "$name: pid '$pid' is not running; removing the stale pidfile"
        rm -f "$pidfile"
        continue
    fi
    kill -TERM "$pid"
    for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 20); do running "$pid" || break; sleep 0.1; done
    fi
    if running "$pid"; then
        log "error: $name (pid $pid) is still running"
        rc=1
    else
        log "$name (pid $pid) stopped"
        rm -f "$pidfile"
    fi
done

"$here/kvm-access.sh" restore /dev/kvm "$run_dir/kvm.orig" || rc=1
if ((rc == 0)); then
    rm -rf "$run_dir"
fi
exit $rc
