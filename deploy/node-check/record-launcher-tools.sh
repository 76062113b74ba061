#!/bin/bash
# Records what QEMU and libvirt in the virt-launcher image say, for `node-check --recorded DIR`:
# KubeVirt runs QEMU and libvirt inside virt-launcher, not on the node, so the DaemonSet runs this in
# the very image its VMs use and the node-check container reads the records.
#   record-launcher-tools.sh DIR
# Each probe (names as in overhead_service/nodecheck/checks.py PROBES) leaves DIR/<probe>.argv,
# .out, .err and .rc (127: the program is missing). With START_VIRTQEMUD=1 it first starts a
# virtqemud of its own, as KubeVirt's node-labeller does, so that virsh can ask for the domain
# capabilities (as a non-root user: a session daemon under XDG_RUNTIME_DIR).
set -u
out=${1:?usage: record-launcher-tools.sh DIR}
mkdir -p "$out"

record() { # record PROBE COMMAND [ARG...]
    local probe=$1
    shift
    echo "$*" >"$out/$probe.argv"
    "$@" >"$out/$probe.out" 2>"$out/$probe.err"
    echo $? >"$out/$probe.rc"
}

qemu=/usr/libexec/qemu-kvm # the launcher's QEMU
if [ ! -x "$qemu" ]; then
    qemu=$(command -v qemu-system-x86_64 || echo "$qemu")
fi
record qemu-version "$qemu" --version
record qemu-accel "$qemu" -accel help
record libvirt-version virsh --version

if [ "${START_VIRTQEMUD:-0}" = 1 ]; then
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/run} HOME=${HOME:-/tmp}
    mkdir -p "$XDG_RUNTIME_DIR"
    virtqemud --daemon >/dev/null 2>&1 && sleep 2
fi
record libvirt-domcaps virsh domcapabilities --machine q35 --arch x86_64 --virttype hyperv
exit 0
