#!/usr/bin/env bash
# Let group kvm use a KVM device for the test libvirtd, and put it back afterwards.
#
# Usage: kvm-access.sh grant DEVICE RECORD     (as root)
#        kvm-access.sh restore DEVICE RECORD
#
# grant: without udev, /dev/kvm stays 0600 root:root, and the qemu that libvirtd starts as
# libvirt-qemu (group kvm) fails with "Could not access KVM kernel module: Permission denied".
# If DEVICE is not already group kvm with g+rw, its owner, group and mode are written to
# RECORD and it becomes group kvm, mode g+rw. Nothing is recorded when nothing changes.
# restore: if RECORD exists, DEVICE gets the recorded owner, group and mode back and RECORD
# is removed.
set -euo pipefail

die() { echo "kvm-access: error: $*" >&2; exit 1; }
[[ $# -eq 3 ]] || die "usage: kvm-access.sh grant|restore DEVICE RECORD"
action=$1 device=$2 record=$3

case $action in
grant)
    if [[ ! -c $device ]]; then
        echo "kvm-access: no $device: libvirt runs TCG domains only"
        exit 0
    fi
    if ! getent group kvm >/dev/null; then
        echo "kvm-access: no group kvm: $device left as it is"
        exit 0
    fi
    read -r uid gid mode < <(stat -c '%u %g %a' "$device")
    kvm_gid=$(getent group kvm | cut -d: -f3)
    if [[ $gid == "$kvm_gid" && $(( 8#$mode & 8#060 )) == $(( 8#060 )) ]]; then
        exit 0
    fi
    [[ ! -e $record ]] || die "$record exists: restore $device first"
    printf '%s %s %s\n' "$uid" "$gid" "$mode" > "$record.tmp"
    mv -f "$record.tmp" "$record"
    chgrp kvm "$device"
    chmod g+rw "$device"
    echo "kvm-access: $device was $uid:$gid $mode, now group kvm g+rw (restored on stop)"
    ;;
restore)
    [[ -e $record ]] || exit 0
    read -r uid gid mode < "$record"
    [[ $uid =~ ^[0-9]+$ && $gid =~ ^[0-9]+$ && $mode =~ ^[0-7]{3,4}$ ]] ||
        die "$record does not hold 'UID GID MODE'"
    chown "$uid:$gid" "$device"
    chmod "$mode" "$device"
    rm -f "$record"
    echo "kvm-access: $device back to $uid:$gid $mode"
    ;;
*)
    die "usage: kvm-access.sh grant|restore DEVICE RECORD"
    ;;
esac
