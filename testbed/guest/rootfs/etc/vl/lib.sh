# Shell helpers shared by /init, the DHCP event scripts and the power-button action
# of the virt-launcher test guest. Every VL-* line goes to the serial console in one write.

say() { echo "$*" > /dev/console; }

uptime_s() { read -r up _rest < /proc/uptime; echo "$up"; }

# csv a b c -> a,b,c (word-split on purpose)
# shellcheck disable=SC2048,SC2086
csv() { echo $* | tr ' ' ','; }

write_pages() {
  h=$(hostname)
  for p in 80 8080; do
    printf 'VL-HTTP-OK port=%s hostname=%s\n' "$p" "$h" > "/www/$p/index.html.new"
    mv "/www/$p/index.html.new" "/www/$p/index.html"
  done
}

# Wait (bounded, 10 s) until the NIC has a non-tentative link-local address: udhcpc6
# sends from it.
wait_linklocal() {
  i=0
  while [ "$i" -lt 100 ]; do
    if ip -6 -o addr show dev "$1" scope link 2>/dev/null | grep -v tentative | grep -q inet6; then
      return 0
    fi
    sleep 0.1
    i=$((i + 1))
  done
  say "VL-ERROR $1 has no usable link-local address after 10 s"
  return 1
}

# start_nic NIC [IPv4]: up, then the DHCP clients; udhcpc asks for IPv4 (-r) if given.
# With vl.mtu6=N the NIC's IPv6 MTU starts at N (below the link's): only a router
# advertisement's MTU option raises it again, so VL-MTU shows what the RA said.
start_nic() {
  [ -n "${VL_MAC:-}" ] && ip link set dev "$1" address "$VL_MAC"
  [ -n "${VL_MTU6:-}" ] && echo "$VL_MTU6" > "/proc/sys/net/ipv6/conf/$1/mtu"
  ip link set dev "$1" up
  [ "${VL_NODHCP:-0}" = 1 ] && return 0
  udhcpc -f -i "$1" -s /etc/vl/dhcp4 -p "/run/vl/udhcpc.$1.pid" -t 3 -T 1 -A 2 \
    ${2:+-r "$2"} -O mtu -O staticroutes -O search > "/run/vl/udhcpc.$1.log" 2>&1 &
  (
    wait_linklocal "$1" || exit 1
    exec udhcpc6 -f -i "$1" -s /etc/vl/dhcp6 -p "/run/vl/udhcpc6.$1.pid" -t 3 -T 1 -A 2 \
      -O dns -O search
  ) > "/run/vl/udhcpc6.$1.log" 2>&1 &
}

stop_nic() {
  for f in "/run/vl/udhcpc.$1.pid" "/run/vl/udhcpc6.$1.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
    rm -f "$f"
  done
  rm -f "/run/vl/lease4.$1" "/run/vl/lease6.$1" "/run/vl/resolv4.$1" "/run/vl/resolv6.$1"
  write_resolv
}

# Link refresh (issue 18): like systemd-networkd on carrier gain, a NIC that held a
# lease and lost carrier runs DHCP again once carrier is back; udhcpc first asks for the
# address it had (as an INIT-REBOOT client would). The kernel's carrier_changes counter
# catches a flap shorter than the main loop's 1 s. Prints VL-LINK-FLAP.
check_flap() {
  read -r changes < "/sys/class/net/$1/carrier_changes" 2> /dev/null || return 0
  read -r carrier < "/sys/class/net/$1/carrier" 2> /dev/null || carrier=0
  leased=0
  [ -e "/run/vl/lease4.$1" ] && leased=1
  last="$changes $leased"
  [ -f "/run/vl/flap.$1" ] && read -r last < "/run/vl/flap.$1"
  echo "$changes $leased" > "/run/vl/flap.$1"
  [ "$changes" != "${last% *}" ] && [ "$carrier" = 1 ] && [ "${last#* }" = 1 ] || return 0
  old=$(ip -4 -o addr show dev "$1" | awk '{print $4; exit}')
  say "VL-LINK-FLAP $1 changes=$changes old=${old%/*} t=$(uptime_s)"
  stop_nic "$1"
  start_nic "$1" "${old%/*}"
  echo "$changes 0" > "/run/vl/flap.$1"
}

write_resolv() {
  cat /run/vl/resolv4.* /run/vl/resolv6.* 2>/dev/null > /etc/resolv.conf
}

# One VL-ADDRS line per NIC, then the default routes, e.g.
#   VL-ADDRS eth0 10.1.2.3/24 fd00::5/128 fe80::5054:ff:fe12:3456/64
#   VL-ROUTES default4=10.1.2.1@eth0 default6=fe80::1@eth0
addr_report() {
  for dev in /sys/class/net/*; do
    [ -e "$dev/device" ] || continue
    n=${dev##*/}
    echo "VL-ADDRS $n $(ip -o addr show dev "$n" | awk '{a = a (a ? " " : "") $4} END {print a}')"
    echo "VL-CARRIER $n $(cat "$dev/carrier" 2> /dev/null || echo 0)"  # issue 18: link state
    echo "VL-MTU $n link=$(cat "$dev/mtu") ipv6=$(cat "/proc/sys/net/ipv6/conf/$n/mtu" 2> /dev/null || echo -)"
  done
  r4=$(ip -4 route show | awk '$1 == "default" {v = "-"; d = "-"; for (i = 1; i < NF; i++) { if ($i == "via") v = $(i + 1); if ($i == "dev") d = $(i + 1) } a = a (a ? "," : "") v "@" d} END {print a}')
  r6=$(ip -6 route show | awk '$1 == "default" {v = "-"; d = "-"; for (i = 1; i < NF; i++) { if ($i == "via") v = $(i + 1); if ($i == "dev") d = $(i + 1) } a = a (a ? "," : "") v "@" d} END {print a}')
  echo "VL-ROUTES default4=$r4 default6=$r6"
}

# cloud-init NoCloud: the first virtio disk or CD-ROM whose ISO 9660 volume id is
# "cidata" is mounted read-only at /mnt/cidata; each file is reported with its sha256,
# and network-config is echoed between markers.
scan_cidata() {
  for dev in /sys/class/block/vd* /sys/class/block/sr*; do
    [ -e "$dev" ] || continue
    n=${dev##*/}
    label=$(dd if="/dev/$n" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000')
    case "$label" in cidata | CIDATA) ;; *) continue ;; esac
    if ! mount -t iso9660 -o ro "/dev/$n" /mnt/cidata; then
      say "VL-ERROR cannot mount cidata from /dev/$n"
      continue
    fi
    say "VL-CIDATA-DEVICE $n"
    (cd /mnt/cidata && find . -type f | sort) | while read -r f; do
      say "VL-CIDATA ${f#./} $(sha256sum < "/mnt/cidata/$f" | cut -d' ' -f1)"
    done
    if [ -f /mnt/cidata/network-config ]; then
      say "VL-CIDATA-NETWORK-CONFIG-BEGIN"
      cat /mnt/cidata/network-config > /dev/console
      say "VL-CIDATA-NETWORK-CONFIG-END"
    fi
    return 0
  done
  return 0
}

# v6short fd77:0000:...:0005 -> fd77::5 (udhcpc6 reports addresses in full form; this is
# the RFC 5952 text form: leading zeros dropped, the longest run of 2+ zero groups as ::).
v6short() {
  echo "$1" | awk -F: '{
    n = NF; bs = 0; bl = 0; cs = 0; cl = 0
    for (i = 1; i <= n; i++) {
      g = $i; sub(/^0+/, "", g); if (g == "") g = "0"; h[i] = tolower(g)
      if (h[i] == "0") { if (cl == 0) cs = i; cl++; if (cl > bl) { bl = cl; bs = cs } } else cl = 0
    }
    out = ""
    for (i = 1; i <= n; i++) {
      if (bl >= 2 && i == bs) { out = out "::"; i += bl - 1; continue }
      if (out != "" && substr(out, length(out)) != ":") out = out ":"
      out = out h[i]
    }
    print out
  }'
}

# --- probes (issue 18: hairpin from inside the guest) -----------------------------------
# vl.probe=HOST:PORT[,HOST:PORT...] on the kernel command line (IPv6 as [addr]:port): once
# the first DHCPv4 lease is there, the guest sends `GET /` to each with busybox nc (2 s per
# try, up to 10 tries, so an IPv6 route still coming by RA is waited for) and reports
# `VL-PROBE <target> ok=1 body=<last line>` or `VL-PROBE <target> ok=0 tries=N`. Spaces
# in the body become '_'. (busybox wget crashes in this static build; nc does not.)
run_probes() {
  i=0
  while [ "$i" -lt 300 ] && ! ls /run/vl/lease4.* > /dev/null 2>&1; do
    sleep 0.1
    i=$((i + 1))
  done
  for target in $(echo "$1" | tr ',' ' '); do
    host=${target%:*}
    host=${host#[}
    host=${host%]}
    port=${target##*:}
    n=0
    while [ "$n" -lt 10 ]; do
      n=$((n + 1))
      reply=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "$host" "$port" 2> /dev/null)
      case "$reply" in
        *VL-HTTP-OK*)
          say "VL-PROBE $target ok=1 body=$(echo "$reply" | tail -n 1 | tr -d '\r' | tr ' ' '_')"
          continue 2
          ;;
      esac
      sleep 1
    done
    say "VL-PROBE $target ok=0 tries=$n"
  done
}
