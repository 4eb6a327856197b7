#!/usr/bin/env bash
# Print what pycapstan's tests and backends could leave behind on the host, one fact a line,
# so that two snapshots (before and after a run) can be compared with diff.
#
# Usage: host-state.sh
set -euo pipefail

if [[ -e /dev/kvm ]]; then
    stat -c '/dev/kvm %u:%g %a' /dev/kvm
else
    echo "/dev/kvm absent"
fi
echo "group kvm: $(getent group kvm | cut -d: -f1,3 || echo absent)"

if [[ -e /etc/qemu ]]; then
    find /etc/qemu -printf '%p %y %m\n' | sort
    find /etc/qemu -type f -exec sha256sum {} + | sort
else
    echo "/etc/qemu absent"
fi
# Persistent domains, networks and storage pools a test defined and did not undefine.
for d in /etc/libvirt/qemu /etc/libvirt/qemu/networks /etc/libvirt/storage; do
    [[ ! -d $d ]] || find "$d" -maxdepth 1 -name '*.xml' -printf 'libvirt definition %p\n' | sort
done

ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}' | sort

# Processes the tests start (guests, daemons, simulators), counted by name.
# Zombies are left out: a daemon's exited process stays one until PID 1 reaps it, and some
# container inits never do. grep finds nothing on an idle host; under pipefail that must not
# end the snapshot.
ps -eo stat=,comm= | awk '$1 !~ /^Z/ {print $2}' |
    { grep -E '^(qemu-system-|libvirtd$|virtlogd$|vcsim$|dnsmasq$)' || true; } | sort | uniq -c |
    awk '{print "process " $2 " x" $1}'
echo "moto_server processes: $(pgrep -fc 'moto[._]server' || true)"
for d in /run/pycapstan-libvirtd /tmp/govcsim-*; do
    [[ -e $d ]] && echo "left: $d"
done
true
