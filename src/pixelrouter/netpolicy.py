"""Which network addresses this server may fetch from on a client's or an upstream's word:
globally routable ones only, judged by the IPv4 address an IPv6 one carries inside it."""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64_PREFIXES = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # well-known (RFC 6052)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use (RFC 8215)
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
    IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::`) and
    Teredo (server and client). Each reaches that IPv4 host through some translator, so each is
    judged as it."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    value = int(address)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d (not :: nor ::1, judged as IPv6)
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if any(address in prefix for prefix in NAT64_PREFIXES):
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def is_public_ip(text: str) -> bool:
    """Globally routable only: no private, loopback, link-local, shared (100.64/10), reserved
    or multicast address, and none inside an IPv6 address that embeds an IPv4 one."""
    try:
        address: IPAddress = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        candidates += embedded_ipv4(address)
    return all(a.is_global and not a.is_multicast for a in candidates)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def host_is_public(host: str) -> bool:
    """Every address the host name resolves to (or the literal address) is public; a name
    that does not resolve is not."""
    host = host.strip("[]")
    if is_ip_literal(host):
        return is_public_ip(host)
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(is_public_ip(str(info[4][0])) for info in infos)
