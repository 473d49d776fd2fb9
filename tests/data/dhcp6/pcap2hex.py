"""Turn a tcpdump capture of a guest link into the committed ``*.hex`` fixtures.

Usage: ``python tests/data/dhcp6/pcap2hex.py CAPTURE.pcap > CLIENT.hex``. Captures
come from ``D6_CAPTURE_DIR=DIR pytest tests/integration/dhcp6`` (the fixture runs
tcpdump on the server side of the veth). Each output line is one client-sent packet:
``dhcp6 SRC_MAC HEX`` (the UDP payload to port 547) or ``rs SRC_MAC HEX`` (the ICMPv6
Router Solicitation); tests/unit/dhcp6/test_captures.py parses them.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path


def frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    if linktype != 1:
        raise SystemExit(f"{path}: link type {linktype} is not Ethernet")
    out, pos = [], 24
    while pos + 16 <= len(data):
        _s, _u, incl, _orig = struct.unpack_from(endian + "IIII", data, pos)
        out.append(data[pos + 16 : pos + 16 + incl])
        pos += 16 + incl
    return out


def main() -> None:
    for frame in frames(Path(sys.argv[1])):
        if len(frame) < 62 or frame[12:14] != b"\x86\xdd":
            continue
        mac = ":".join(f"{b:02x}" for b in frame[6:12])
        ip = frame[14:]
        nxt = ip[6]
        if nxt == 17 and struct.unpack_from("!H", ip, 42)[0] == 547:
            (ulen,) = struct.unpack_from("!H", ip, 44)
            print("dhcp6", mac, ip[48 : 40 + ulen].hex())
        elif nxt == 58 and ip[40] == 133:
            print("rs", mac, ip[40:].hex())


if __name__ == "__main__":
    main()
