#!/usr/bin/env bash
# Start libvirtd (and virtlogd) for pycapstan's tests, on a host without systemd.
#
# Usage: start-libvirtd.sh            (as root; stop with stop-libvirtd.sh)
# Environment:
#   PYCAPSTAN_LIBVIRTD_RUN_DIR   pidfiles, logs, the /dev/kvm record (default /run/pycapstan-libvirtd)
#   PYCAPSTAN_LIBVIRTD_TIMEOUT   seconds to wait for qemu:///system to answer (default 120)
#
# If qemu:///system already answers, nothing is started or changed. Otherwise /dev/kvm is
# opened to group kvm (kvm-access.sh records what it was), virtlogd and libvirtd are started
# with pidfiles in the run directory, and the script returns once `virsh version` answers.
# stop-libvirtd.sh stops exactly those PIDs and puts /dev/kvm back.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run_dir="${PYCAPSTAN_LIBVIRTD_RUN_DIR:-/run/pycapstan-libvirtd}"
timeout_s="${PYCAPSTAN_LIBVIRTD_TIMEOUT:-120}"
uri=qemu:///system

log() { echo "start-libvirtd: $*"; }
die() { echo "start-libvirtd: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
for tool in libvirtd virtlogd virsh qemu-system-x86_64; do
    command -v "$tool" >/dev/null ||
        die "$tool not found: install libvirt-daemon-system libvirt-daemon-driver-qemu" \
            "libvirt-clients qemu-system-x86 (the README's set-up command does)"
done

# answers [SECONDS]: virsh gets an answer (the first connection blocks until libvirtd has
# probed QEMU, 8-12 s on 2 cores the first time, so each try is bounded).
answers() { timeout -k 2 "${1:-10}" virsh -c "$uri" version >/dev/null 2>&1; }

# alive NAME: the pidfile of NAME names a live process called NAME.
alive() {
    local pidfile="$run_dir/$1.pid" pid
    [[ -s $pidfile ]] || return 1
    pid="$(cat "$pidfile")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] || return 1
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

if answers; then
    log "$uri already answers: using the running libvirtd, nothing started"
    exit 0
fi

mkdir -p "$run_dir"
fail() {
    echo "start-libvirtd: error: $*" >&2
    echo "--- last lines of $run_dir/libvirtd.log:" >&2
    tail -n 20 "$run_dir/libvirtd.log" >&2 2>/dev/null || echo "(no log)" >&2
    "$here/stop-libvirtd.sh" >&2 || true
    exit 1
}

"$here/kvm-access.sh" grant /dev/kvm "$run_dir/kvm.orig" || fail "could not open /dev/kvm"

# virtlogd: qemu.conf's stdio_handler=logd needs it ("Failed to connect socket to
# '/run/libvirt/virtlogd-sock'" otherwise).
if alive virtlogd; then
    log "virtlogd already running (pid $(cat "$run_dir/virtlogd.pid"))"
elif [[ -S /run/libvirt/virtlogd-sock ]] && pgrep -x virtlogd >/dev/null; then
    log "a virtlogd not started here is running; using it"
else
    LIBVIRT_LOG_OUTPUTS="3:file:$run_dir/virtlogd.log" virtlogd -d -p "$run_dir/virtlogd.pid"
fi

if ! alive libvirtd; then
    LIBVIRT_LOG_OUTPUTS="3:file:$run_dir/libvirtd.log" libvirtd -d -p "$run_dir/libvirtd.pid"
fi

start=$SECONDS
until answers 10; do
    ((SECONDS - start < timeout_s)) || fail "'virsh -c $uri version' did not answer in ${timeout_s} s"
    sleep 0.2
done
# libvirtd writes its pidfile a moment after it forks.
for _ in $(seq 50); do alive libvirtd && break; sleep 0.1; done
alive libvirtd || fail "libvirtd answered but wrote no pidfile in $run_dir"
log "ready after $((SECONDS - start)) s (libvirtd pid $(cat "$run_dir/libvirtd.pid"), logs in $run_dir)"
