#!/bin/sh
# Re-capture the real client packets in this folder (root, Debian 12).
# A throwaway netns pair (d4-cap-s/d4-cap-c) with dnsmasq as the server; each client
# runs once against it; tshark dumps every client->server DHCP payload as hex.
set -eu
out=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
cleanup() {
    if [ -f "$tmp/dnsmasq.pid" ]; then kill "$(cat "$tmp/dnsmasq.pid")" 2>/dev/null || true; fi
    if [ -n "${tcpdump_pid:-}" ]; then kill "$tcpdump_pid" 2>/dev/null || true; fi
    ip netns del d4-cap-s 2>/dev/null || true
    ip netns del d4-cap-c 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add d4-cap-s
ip netns add d4-cap-c
ip link add d4cs0 netns d4-cap-s type veth peer name d4cc0 netns d4-cap-c
ip -n d4-cap-s link set d4cs0 address 02:d4:00:00:00:01 up
ip -n d4-cap-c link set d4cc0 address 02:d4:00:00:00:02 up
ip -n d4-cap-s addr add 169.254.75.1/16 dev d4cs0
ip -n d4-cap-s link set lo up
ip -n d4-cap-c link set lo up
ip netns exec d4-cap-s dnsmasq --no-resolv --no-hosts --port=0 --interface=d4cs0 \
    --bind-interfaces --dhcp-range=169.254.75.10,169.254.75.20,255.255.0.0,1h \
    --dhcp-leasefile="$tmp/leases" --pid-file="$tmp/dnsmasq.pid"
capture() {  # name, command...
    name=$1; shift
    ip netns exec d4-cap-s tcpdump -q -i d4cs0 -w "$tmp/$name.pcap" -U udp port 67 2>/dev/null &
    tcpdump_pid=$!
    sleep 1
    timeout 30 ip netns exec d4-cap-c "$@" >/dev/null 2>&1 || true
    sleep 1
    kill "$tcpdump_pid"; wait "$tcpdump_pid" 2>/dev/null || true
    tcpdump_pid=
    tshark -r "$tmp/$name.pcap" -Y 'udp.dstport == 67' -T fields -e dhcp.option.dhcp -e udp.payload \
        | while read -r kind payload; do
            case $kind in 1) t=discover ;; 3) t=request ;; 8) t=inform ;; 7) t=release ;; *) t=type$kind ;; esac
            [ -f "$out/$name-$t.hex" ] || echo "$payload" > "$out/$name-$t.hex"
        done
    ip -n d4-cap-c addr flush dev d4cc0
    rm -f /var/lib/dhcpcd/d4cc0.lease
}
capture dhclient dhclient -1 -v -lf "$tmp/dhclient.lease" -pf "$tmp/dhclient.pid" -sf /bin/true d4cc0
capture dhclient-reboot dhclient -1 -v -lf "$tmp/dhclient.lease" -pf "$tmp/dhclient.pid" -sf /bin/true d4cc0
ip netns exec d4-cap-c dhclient -x -pf "$tmp/dhclient.pid" >/dev/null 2>&1 || true
capture dhcpcd dhcpcd -1 -4 -f /dev/null -c /bin/true --nohook resolv.conf -t 20 d4cc0
capture udhcpc busybox udhcpc -i d4cc0 -n -q -f -s /bin/true -x hostname:guest1
# systemd-networkd: its own mount namespace with a private config dir and state dir and
# /sys read-only (otherwise it waits for udev); stopped once it has the lease.
mkdir -p "$tmp/network" "$tmp/netif"
printf '[Match]\nName=d4cc0\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    > "$tmp/network/10-d4.network"
cat > "$tmp/networkd.sh" <<NWD
#!/bin/sh
set -e
mount --make-rprivate /
mount --bind $tmp/network /etc/systemd/network
chown systemd-network:systemd-network $tmp/netif
mount --bind $tmp/netif /run/systemd/netif
mount -o remount,ro /sys
exec timeout 8 /lib/systemd/systemd-networkd
NWD
chmod +x "$tmp/networkd.sh"
capture networkd unshare -m "$tmp/networkd.sh"
ls -l "$out"
