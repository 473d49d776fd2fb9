"""Option helpers shared by the DHCPv4 and DHCPv6 servers (and their CLIs).

Provides the DNS wire-format encoding of a domain search list (RFC 3397 for DHCPv4
option 119, RFC 3646 for DHCPv6 option 24) via dnslib, and name validation. The
callers are ``dhcp.v4.options`` and ``dhcp.v6``; nothing here reads resolv.conf — the
caller passes the lists it read. dnslib (≈12 ms to import) is imported by the two
codec functions on first use: validating a name (``check_domain``, which every
configuration type calls) must stay cheap for the launcher's network plan.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["encode_search_list", "decode_search_list", "check_domain"]


def check_domain(name: str) -> str:
    """Return ``name`` without a trailing dot; ValueError if it is not a valid DNS name."""
    bare = name.rstrip(".")
    if not bare or len(bare) > 253:
        raise ValueError(f"domain {name!r} is empty or longer than 253 characters")
    for label in bare.split("."):
        if not 1 <= len(label) <= 63:
            raise ValueError(f"domain {name!r} has an empty or over-long label")
        if not all(c.isalnum() or c in "-_" for c in label) or not label.isascii():
            raise ValueError(f"domain {name!r} has a character that is not allowed")
    return bare


def encode_search_list(domains: Iterable[str], *, compress: bool = True) -> bytes:
    """DNS wire format of ``domains`` (RFC 1035 names, optionally with compression pointers).

    DHCPv4 option 119 allows compression (RFC 3397); DHCPv6 option 24 forbids it
    (RFC 3646 section 5, "MUST NOT be compressed") so v6 passes ``compress=False``.
    """
    from dnslib import DNSBuffer, DNSLabel  # noqa: PLC0415 - see the module docstring

    buf = DNSBuffer()
    for domain in domains:
        label = DNSLabel(check_domain(domain))
        if compress:
            buf.encode_name(label)
        else:
            buf.encode_name_nocompress(label)
    return bytes(buf.data)


def decode_search_list(data: bytes) -> list[str]:
    """Inverse of :func:`encode_search_list`; ValueError if ``data`` is not a name list."""
    from dnslib import DNSBuffer  # noqa: PLC0415 - see the module docstring

    buf = DNSBuffer(data)
    names: list[str] = []
    try:
        while buf.remaining() > 0:
            names.append(str(buf.decode_name()).rstrip("."))
    except Exception as err:
        raise ValueError(f"search list {data.hex()} is not DNS wire format") from err
    return names
