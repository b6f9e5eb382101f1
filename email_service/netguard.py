"""Which mail servers the service may connect to: no internal addresses, no plaintext.

Account settings name the hosts the service connects to, so without a policy a caller
could point an "IMAP server" at the service's own network: a database, a cloud metadata
endpoint, another tenant's internal host. :class:`HostPolicy` refuses any host that
resolves to an address that is not globally routable - loopback, private, link-local,
multicast, reserved, unspecified, shared (CGNAT) - and the cloud metadata endpoints
(whatever an allow-list says). IPv6 forms that embed an IPv4 address (mapped, NAT64,
6to4, Teredo) are judged by that address as well.

The policy runs twice: when an account is created or updated (a 400 the caller can act
on), and before every connection (DNS answers change), through the guard that
:func:`install_connect_guard` hands to ``email_service.mail.endpoint``. At connect time
the guard returns the addresses it checked and the client connects to exactly those
(``resolve_target`` and the pinned clients there): the name is resolved once, so a DNS
server cannot answer the guard with a public address and the client with a private one
(DNS rebinding).

``MAIL_ALLOWED_HOSTS`` lifts the refusal for what an operator trusts: an entry is a host
name (``mail.internal``), a wildcard for a domain's subdomains (``*.corp.example``), an
address or a network in CIDR form (``10.20.0.0/16``). A listed *name* need not resolve
when an account is saved; whenever it does resolve (on save, and always at connect time)
its addresses are still checked against the metadata endpoints, which no entry lifts.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from email_service.config import Settings
from email_service.errors import InvalidRequest
from email_service.mail.endpoint import set_connect_guard

__all__ = [
    "METADATA_ADDRESSES",
    "HostNotAllowed",
    "HostPolicy",
    "HostUnresolvable",
    "PlaintextNotAllowed",
    "install_connect_guard",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[IPAddress]]

#: Instance metadata endpoints of the big clouds (AWS, GCP, Azure, OpenStack; AWS over
#: IPv6; Alibaba; Oracle) and the container credential endpoints (ECS task role
#: 169.254.170.2, EKS Pod Identity 169.254.170.23 and fd00:ec2::23). Refused even when an
#: allow-list entry covers them.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "fd00:ec2::254",
        "100.100.100.200",
        "192.0.0.192",
        "169.254.170.2",
        "169.254.170.23",
        "fd00:ec2::23",
    )
)

#: Deprecated IPv6 site-local addresses (RFC 3879): internal, yet Python counts them as
#: global.
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class HostNotAllowed(InvalidRequest):
    code = "HOST_NOT_ALLOWED"


class HostUnresolvable(InvalidRequest):
    code = "HOST_UNRESOLVABLE"


class PlaintextNotAllowed(InvalidRequest):
    code = "PLAINTEXT_NOT_ALLOWED"


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why mail connections may not reach ``address``, or None if they may."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = forbidden_reason(embedded)
        if reason is not None:
            return reason
    if address in METADATA_ADDRESSES:
        return "a cloud metadata endpoint"
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address in _SITE_LOCAL, "a site-local address"),
        (address.is_multicast, "a multicast address"),
        # Reserved before private: Python counts 240.0.0.0/4 as both.
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        # Shared (100.64.0.0/10), documentation, benchmarking and the rest.
        (not address.is_global, "an address that is not publicly routable"),
    )
    for matched, reason in checks:
        if matched:
            return reason
    return None


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to, as the mail clients' sockets would see them.

    ``getaddrinfo`` also reads the numeric shorthands (``2130706433``, ``0x7f.1``,
    ``127.1``) that a naive "is it an IP literal" check misses. Raises ``OSError``.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # The scope id of a link-local IPv6 answer ("fe80::1%eth0") is not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


@dataclass(frozen=True)
class HostPolicy:
    """The outbound connection policy; build it with :meth:`from_settings`."""

    allowed_names: frozenset[str] = frozenset()
    allowed_suffixes: tuple[str, ...] = ()  # ".corp.example" for "*.corp.example"
    allowed_networks: tuple[IPNetwork, ...] = ()
    allow_plaintext: bool = False
    resolver: Resolver = system_resolver

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolver) -> HostPolicy:
        """Parse ``MAIL_ALLOWED_HOSTS``. Raises ``ValueError`` on a malformed entry."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in settings.mail_allowed_hosts:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry.startswith("*."):
                if "*" in entry[2:] or len(entry) < 3:
                    raise ValueError(f"MAIL_ALLOWED_HOSTS: bad wildcard entry {raw!r}")
                suffixes.append(entry[1:])
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "*" in entry or "/" in entry:
                raise ValueError(f"MAIL_ALLOWED_HOSTS: bad entry {raw!r}")
            names.add(entry)
        return cls(
            allowed_names=frozenset(names),
            allowed_suffixes=tuple(suffixes),
            allowed_networks=tuple(networks),
            allow_plaintext=settings.mail_allow_plaintext,
            resolver=resolver,
        )

    def name_is_listed(self, host: str) -> bool:
        name = host.strip().lower().rstrip(".")
        return name in self.allowed_names or any(name.endswith(s) for s in self.allowed_suffixes)

    def _address_is_listed(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)

    def check_host(self, host: str, port: int) -> list[IPAddress]:
        """Refuse ``host`` unless every address it resolves to may be reached.

        Returns the addresses it checked (in the resolver's order): a connection must go
        to these and no others. Raises :class:`HostUnresolvable` when it does not
        resolve and :class:`HostNotAllowed` (with the reason, never the address) when an
        address is internal and not on the allow-list, or is a metadata endpoint. A
        listed name that does not resolve passes with no addresses (when saving it need
        not resolve yet; when connecting, the caller reports the failure); one that
        resolves is checked against the metadata endpoints only.
        """
        listed_name = self.name_is_listed(host)
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError, ValueError):
            if listed_name:
                return []
            raise HostUnresolvable(f"The mail host '{host}' does not resolve") from None
        if not addresses and not listed_name:
            raise HostUnresolvable(f"The mail host '{host}' does not resolve")
        for address in addresses:
            if address in METADATA_ADDRESSES or (_embedded_ipv4(address) in METADATA_ADDRESSES):
                raise HostNotAllowed(
                    f"The mail host '{host}' resolves to a cloud metadata endpoint"
                )
            if listed_name or self._address_is_listed(address):
                continue
            reason = forbidden_reason(address)
            if reason is not None:
                raise HostNotAllowed(
                    f"The mail host '{host}' resolves to {reason}, which mail connections "
                    "may not reach"
                )
        return list(addresses)

    def check_encryption(self, field: str, encryption: str) -> None:
        """Refuse ``encryption: none`` unless ``MAIL_ALLOW_PLAINTEXT`` is set."""
        if encryption == "none" and not self.allow_plaintext:
            raise PlaintextNotAllowed(
                f"'{field}' cannot be 'none': this service does not send mail credentials "
                "unencrypted"
            )

    def check_account(
        self, hosts: Iterable[tuple[str, int]], encryptions: Iterable[tuple[str, str]]
    ) -> None:
        """Check account settings about to be saved: field/encryption pairs, host/port pairs."""
        for field, encryption in encryptions:
            self.check_encryption(field, encryption)
        for host, port in hosts:
            self.check_host(host, port)

    def connect_guard(self, host: str, port: int) -> list[IPAddress]:
        """The guard for ``email_service.mail.endpoint.set_connect_guard``: the checked
        addresses, which the connection is then pinned to."""
        return self.check_host(host, port)


def install_connect_guard(settings: Settings) -> HostPolicy:
    """Build the policy from ``settings`` and make every mail connection of this process
    pass through it. Called by ``build_runtime``, which every process (API server,
    workers, scheduler, CLI) uses, so none connects unguarded."""
    policy = HostPolicy.from_settings(settings)
    set_connect_guard(policy.connect_guard)
    return policy
