#!/bin/sh
# Entrypoint of the VM pod's container. exec replaces this shell, so the launcher is
# PID 1 and receives kubelet's SIGTERM directly. Arguments pass through unchanged;
# without any, the launcher runs the VM.
set -eu
if [ "$#" -eq 0 ]; then
    set -- run
fi
exec virt-launcher "$@"
