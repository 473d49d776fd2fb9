"""The DHCP package's own error tree (the package is reusable without the launcher).

::

    DhcpError
    ├── MalformedPacket     bytes that are not a valid DHCPv4/DHCPv6/ICMPv6 message
    └── ServerError         a server could not bind or serve its interface

Codecs raise only :class:`MalformedPacket` for bad input, never another exception;
servers log and drop such packets, so nothing a guest sends can crash the launcher.
"""

from __future__ import annotations

__all__ = ["DhcpError", "MalformedPacket", "ServerError"]


class DhcpError(Exception):
    """Base of every error raised by the ``dhcp`` package."""


class MalformedPacket(DhcpError):
    """The bytes are not a valid message; the text says which field and why."""


class ServerError(DhcpError):
    """A server could not be started or failed while serving."""
