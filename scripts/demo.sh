#!/usr/bin/env bash
# The README's main command (run as root on Debian 12): installs everything, validates
# every bundled example, then boots the demo VM (examples/demo-vm.yaml) with
# `virt-launcher run` in a simulated pod and shows it working:
#
#   * network namespaces vl-demo-pod (the pod: eth0 10.244.1.5/24 + fd00:10:244:1::5/64,
#     default routes via the peer, its own resolv.conf) and vl-demo-peer (the "cluster"),
#     joined by a veth; both are removed on exit, whatever happens;
#   * the tiny test guest (Debian cloud kernel + busybox initramfs, built once and cached
#     in ~/.cache/virt-launcher by testbed/guest/build.py) is placed where the demo spec's
#     kernelBoot paths say, under a temporary --volumes-dir;
#   * the launcher runs QEMU (TCG here, KVM where it really works) with the bridge
#     binding: the guest gets the pod's own addresses from the launcher's DHCP servers;
#   * the script prints the guest's addresses, the status endpoint, fetches the guest's
#     HTTP page from the peer at the pod IP, then sends SIGTERM and waits for exit 0.
#
# Environment: DEMO_KEEP_LOGS=1 keeps the work directory (launcher stdout/stderr).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (it creates network namespaces)" >&2
  exit 2
fi
bash scripts/install.sh

launcher=.venv/bin/virt-launcher
py=.venv/bin/python
spec=examples/demo-vm.yaml
POD=vl-demo-pod
PEER=vl-demo-peer
POD4=10.244.1.5 PEER4=10.244.1.1
POD6=fd00:10:244:1::5 PEER6=fd00:10:244:1::1
BOOT_TIMEOUT_S=120 # launcher start -> guest lease; about 10 s under TCG
STOP_TIMEOUT_S=40  # SIGTERM -> exit (the spec's grace period is 10 s)

say() { printf '\n== %s\n' "$*" >&2; }

say "validate every bundled example"
for f in examples/*.yaml; do
  printf '%-48s ' "$f"
  "$launcher" validate --spec "$f"
done

work=$(mktemp -d /tmp/vl-demo.XXXXXX)
launcher_pid=""
cleanup() {
  local rc=$?
  if [ -n "$launcher_pid" ] && kill -0 "$launcher_pid" 2>/dev/null; then
    kill -KILL "$launcher_pid" 2>/dev/null || true
    wait "$launcher_pid" 2>/dev/null || true
  fi
  # a QEMU left behind by a killed launcher dies with the pod netns's last tap user
  if [ -f "$work/state/qemu/qemu.pid" ]; then
    kill -KILL "$(cat "$work/state/qemu/qemu.pid")" 2>/dev/null || true
  fi
  ip netns del "$POD" 2>/dev/null || true
  ip netns del "$PEER" 2>/dev/null || true
  rm -rf "/etc/netns/$POD"
  if [ "${DEMO_KEEP_LOGS:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    echo "demo.sh: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "the guest: Debian cloud kernel + busybox initramfs (first run downloads and builds it)"
# The whole output is read (a `| head -n 1` would close the pipe before the build's second
# line and fail it with EPIPE, now and then); the first line is the image's JSON.
guest_out=$(timeout 1800 "$py" -m testbed.guest.build)
guest_json=${guest_out%%$'\n'*}
kernel=$(printf '%s' "$guest_json" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["kernel"])')
initrd=$(printf '%s' "$guest_json" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["initrd"])')
echo "kernel $kernel" >&2
echo "initrd $initrd" >&2
# demo-vm.yaml: kernelPath /boot/vmlinuz, initrdPath /boot/initrd.img (docs/volumes.md)
# QEMU runs as uid/gid 107 (docs/privileges.md): the kernel files are copied where that
# user can read them (the guest cache lives under root's home).
chmod 755 "$work"
volumes="$work/volumes"
mkdir -p "$volumes/kernel/boot"
install -m 644 "$kernel" "$volumes/kernel/boot/vmlinuz"
install -m 644 "$initrd" "$volumes/kernel/boot/initrd.img"

say "a simulated pod: netns $POD (eth0 $POD4/24, $POD6/64) wired to $PEER"
for ns in "$POD" "$PEER"; do ip netns del "$ns" 2>/dev/null || true; done
ip netns add "$POD"
ip netns add "$PEER"
ip -n "$POD" link add eth0 type veth peer name eth0 netns "$PEER"
ip -n "$POD" addr add "$POD4/24" dev eth0
ip -n "$POD" addr add "$POD6/64" dev eth0 nodad
ip -n "$PEER" addr add "$PEER4/24" dev eth0
ip -n "$PEER" addr add "$PEER6/64" dev eth0 nodad
for ns in "$POD" "$PEER"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done
ip -n "$POD" route add default via "$PEER4"
ip -n "$POD" -6 route add default via "$PEER6"
mkdir -p "/etc/netns/$POD"
printf 'nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n' \
  >"/etc/netns/$POD/resolv.conf"

opts=(--spec "$spec" --volumes-dir "$volumes" --state-dir "$work/state")

say "plan (what run will do; nothing is changed): $work/plan.json"
ip netns exec "$POD" "$launcher" plan "${opts[@]}" >"$work/plan.json"
"$py" - "$work/plan.json" <<'EOF'
import json, shlex, sys
doc = json.load(open(sys.argv[1]))
nic = doc["network"]["nics"][0]
v4, v6 = nic["dhcp4"], nic["dhcp6"]
print(f"guest NIC {nic['device']['mac']} on tap {nic['device']['tap']}: "
      f"DHCPv4 {v4['leases'][0]['address']} via {v4['router']}, "
      f"DHCPv6 {v6['leases'][0]['address'] if v6 else '-'}")
hv = doc["hypervisor"]
print(f"{hv['kind']}: " + shlex.join(hv.get("argv") or []))
EOF

say "virt-launcher run in $POD (QEMU; the guest serial console is on the launcher's stdout)"
started=$(date +%s.%N)
ip netns exec "$POD" "$launcher" run "${opts[@]}" --termination-log "$work/termination-log" \
  >"$work/stdout" 2>"$work/stderr" &
launcher_pid=$!

lease4="" lease6=""
for _ in $(seq 1 $((BOOT_TIMEOUT_S * 5))); do
  if ! kill -0 "$launcher_pid" 2>/dev/null; then
    echo "demo.sh: the launcher exited early; its log:" >&2
    tail -n 20 "$work/stderr" >&2
    exit 1
  fi
  lease4=$(grep -m1 -o 'VL-LEASE4 .*' "$work/stdout" || true)
  lease6=$(grep -m1 -o 'VL-LEASE6 .*' "$work/stdout" || true)
  if [ -n "$lease4" ] && [ -n "$lease6" ]; then break; fi
  sleep 0.2
done
if [ -z "$lease4" ]; then
  echo "demo.sh: no DHCPv4 lease within ${BOOT_TIMEOUT_S}s; launcher log:" >&2
  tail -n 20 "$work/stderr" >&2
  exit 1
fi
now=$(date +%s.%N)
printf 'guest leases after %.1f s:\n  %s\n  %s\n' "$(echo "$now - $started" | bc)" \
  "$lease4" "${lease6:-(no DHCPv6 lease yet)}"
printf 'guest address: %s %s (the pod IP, handed over by the launcher)\n' \
  "$(echo "$lease4" | awk '{print $3}')" "$(echo "$lease6" | awk '{print $3}')"

say "status endpoint: http://127.0.0.1:8186/status in the pod (virt-launcher status)"
if ! ip netns exec "$POD" "$launcher" status; then
  echo "(the status endpoint did not answer)"
fi
echo "raw: ip netns exec $POD curl http://127.0.0.1:8186/status ; metrics: /metrics"

say "the guest's web page, fetched from $PEER at the pod IP $POD4"
page=""
for _ in $(seq 1 20); do
  if page=$(ip netns exec "$PEER" curl -fsS --max-time 2 "http://$POD4/"); then break; fi
  sleep 0.5
done
if [ -z "$page" ]; then
  echo "demo.sh: the guest's HTTP page was not reachable at $POD4" >&2
  exit 1
fi
echo "http://$POD4/ -> $page"
page6=""
for _ in $(seq 1 10); do
  if page6=$(ip netns exec "$PEER" curl -fsS --max-time 1 "http://[$POD6]/" 2>/dev/null); then break; fi
  sleep 0.5
done
echo "http://[$POD6]/ -> ${page6:-(not reachable from the peer over IPv6)}"
grep -o 'VL-ROUTES .*' "$work/stdout" | tail -n 1 || true

say "SIGTERM: power button, the guest powers off, the launcher exits"
kill -TERM "$launcher_pid"
rc=""
for _ in $(seq 1 $((STOP_TIMEOUT_S * 5))); do
  if ! kill -0 "$launcher_pid" 2>/dev/null; then
    set +e
    wait "$launcher_pid"
    rc=$?
    set -e
    break
  fi
  sleep 0.2
done
launcher_pid=""
grep -o 'VL-POWER-BUTTON.*\|VL-POWEROFF.*' "$work/stdout" || true
if [ -z "$rc" ]; then
  echo "demo.sh: the launcher did not exit within ${STOP_TIMEOUT_S}s of SIGTERM" >&2
  exit 1
fi
echo "launcher exit code: $rc"
[ "$rc" -eq 0 ]
say "done: namespaces $POD and $PEER are removed on exit"
