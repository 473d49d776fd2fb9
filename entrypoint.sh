#!/bin/sh
# Entrypoint of the VM pod's container. exec replaces this shell, so the launcher is
# PID 1 and receives kubelet's SIGTERM directly. Arguments pass through unchanged;
# without any, the launcher runs the VM.
set -eu
if [ "$#" -eq 0 ]; then
    set -- run
fi
case " $* " in
    *" run "*)
        # Ignored signals stay ignored across exec: a SIGTERM in the interpreter's first
        # milliseconds must not kill `run`, whose first line records it (docs/run.md).
        trap '' TERM INT ;;
esac
exec virt-launcher "$@"
