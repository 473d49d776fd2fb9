"""In-process DHCPv4, DHCPv6 and router-advertisement servers for guest NICs."""

__all__: list[str] = []
