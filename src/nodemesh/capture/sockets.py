"""Sockets inside a pod's network namespace, for a node proxy that lives outside it.

ztunnel's in-pod mode (istio-ambient.md §3.1 steps 4-5; `ZT:src/inpod/linux/config.rs`
`InPodSocketFactory`, `ZT:src/inpod/netns.rs` `InpodNetns::run`): the proxy `setns()`es into the
pod's namespace, creates a socket, and switches straight back. A socket keeps the namespace it
was created in for its whole life, so the proxy serves it from its own event loop while the
app's traffic never leaves the pod's namespace before the proxy sees it. Every socket made this
way carries `SO_MARK` 0x539, which the in-pod rules exempt from capture (`rules.py`), and
listeners get `SO_REUSEPORT` (`INPOD_PORT_REUSE=true`, ztunnel's `InPodSocketPortReuseFactory`).

Invariants:
- The namespace switch is the *calling thread's*, and lasts exactly one `socket()` call: the
  thread is back in its own namespace before any other code runs on it, so calling this from the
  event loop's thread is safe (nothing else runs on that thread meanwhile). The switch back is
  to the namespace the thread was in before the call, read from `/proc/thread-self/ns/net`.
  If the switch back ever fails, `NetnsSwitchError(thread_stranded=True)` says so (ztunnel
  panics there).
- Only `socket()` runs in the pod's namespace; `setsockopt`, `bind`, `listen` and `connect` act
  on the socket's own namespace from anywhere.
- Sockets are returned non-blocking, ready for `asyncio` (`start_server(sock=...)`,
  `loop.sock_connect`), as ztunnel hands tokio non-blocking sockets.
- The factory holds an open descriptor of the pod's namespace (the role of the fd istio-cni
  passes ztunnel over SCM_RIGHTS): the namespace lives as long as the factory is open, so close
  it when the pod goes away.

`HostSocketFactory` takes the node proxy's options for sockets in its own namespace: a
factory-wide listen `backlog`, `freebind` (IP_FREEBIND next to IP_TRANSPARENT), `bind_no_port`
(transparent sockets bound with `bind_source`) and `dual_stack=False` (leave IPV6_V6ONLY at the
system default). The defaults are the in-pod behaviour above.

`original_dst` reads the address a REDIRECTed connection was sent to (SO_ORIGINAL_DST, what
`ZT:src/socket.rs` `orig_dst_addr` reads); `parse_sockaddr` is its pure half.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, TypeVar

from nodemesh.capture.errors import NetnsSwitchError, OriginalDestinationError
from nodemesh.capture.rules import INPOD_MARK
from nodemesh.runtime.netns import CLONE_NEWNET, setns

__all__ = [
    "IP6T_SO_ORIGINAL_DST",
    "IPV6_TRANSPARENT",
    "SO_ORIGINAL_DST",
    "HostSocketFactory",
    "PodSocketFactory",
    "SocketAddress",
    "SocketFactory",
    "bind_source",
    "original_dst",
    "parse_sockaddr",
]

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h, level SOL_IP
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h, level SOL_IPV6
SOL_IPV6 = 41
IPV6_TRANSPARENT = 75  # linux/in6.h
IP_FREEBIND = 15  # linux/in.h
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), not bind()
LISTEN_BACKLOG = 128  # ztunnel's `sock.listen(128)`

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """An IP address and a port, as SO_ORIGINAL_DST reports it."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def as_tuple(self) -> tuple[str, int]:
        """The `(host, port)` form `socket` and `asyncio` take."""
        return (str(self.ip), self.port)

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


def parse_sockaddr(raw: bytes) -> SocketAddress:
    """A `struct sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes) as the kernel returns it:
    `sa_family` in host order, then the port and address in network order."""
    if len(raw) < 8:
        raise OriginalDestinationError(errno.EINVAL, f"sockaddr too short ({len(raw)} bytes)")
    (family,) = struct.unpack_from("=H", raw, 0)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return SocketAddress(ipaddress.IPv4Address(raw[4:8]), port)
    if family == socket.AF_INET6 and len(raw) >= 24:
        return SocketAddress(ipaddress.IPv6Address(raw[8:24]), port)
    raise OriginalDestinationError(errno.EAFNOSUPPORT, f"unsupported sockaddr family {family}")


def original_dst(sock: socket.socket) -> SocketAddress:
    """Where the client of this accepted connection was really connecting to, before the
    in-pod REDIRECT changed it to the proxy's port (conntrack's original tuple).

    An IPv4 client on a dual-stack IPv6 socket is asked at the IPv4 level, as ztunnel does."""
    try:
        if sock.family == socket.AF_INET:
            return parse_sockaddr(sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16))
        if sock.family == socket.AF_INET6:
            peer = ipaddress.IPv6Address(sock.getpeername()[0].split("%")[0])
            if peer.ipv4_mapped is not None:
                v4 = parse_sockaddr(sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16))
                return SocketAddress(ipaddress.IPv6Address(f"::ffff:{v4.ip}"), v4.port)
            return parse_sockaddr(sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28))
    except OriginalDestinationError:
        raise
    except OSError as exc:
        code = exc.errno or errno.EINVAL
        raise OriginalDestinationError(code, f"SO_ORIGINAL_DST: {os.strerror(code)}") from exc
    raise OriginalDestinationError(errno.EAFNOSUPPORT, f"SO_ORIGINAL_DST on a {sock.family!r} socket")


class SocketFactory(Protocol):
    """The seam the node proxy opens sockets through (ztunnel's `proxy::SocketFactory`): the
    same proxy code binds in the node's namespace or inside a pod's, with or without a mark."""

    def tcp_bind(
        self, port: int, host: str = "0.0.0.0", *, backlog: int | None = None, transparent: bool = False
    ) -> socket.socket: ...

    def new_tcp(self, family: int = socket.AF_INET) -> socket.socket: ...

    def transparent_tcp(self, source: str) -> socket.socket: ...

    def udp_bind(self, port: int, host: str = "127.0.0.1") -> socket.socket: ...


class _Factory:
    """The socket options shared by both factories; subclasses decide where `socket()` runs."""

    def __init__(
        self,
        *,
        mark: int | None,
        reuse_port: bool,
        backlog: int = LISTEN_BACKLOG,
        freebind: bool = False,
        bind_no_port: bool = False,
        dual_stack: bool = True,
    ) -> None:
        self.mark = mark
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.freebind = freebind
        self.bind_no_port = bind_no_port
        self.dual_stack = dual_stack

    def _create(self, family: int, kind: int) -> socket.socket:
        return socket.socket(family, kind)

    def _configure(self, sock: socket.socket) -> socket.socket:
        try:
            if self.mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _new(self, family: int, kind: int) -> socket.socket:
        return self._configure(self._create(family, kind))

    def tcp_bind(
        self, port: int, host: str = "0.0.0.0", *, backlog: int | None = None, transparent: bool = False
    ) -> socket.socket:
        """A listening TCP socket on `host:port` (`::` makes a dual-stack one unless the factory
        has `dual_stack=False`); `backlog` None is the factory's."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self._new(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and self.dual_stack:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if transparent:
                _set_transparent(sock, freebind=self.freebind)
            sock.bind((host, port))
            sock.listen(self.backlog if backlog is None else backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def new_tcp(self, family: int = socket.AF_INET) -> socket.socket:
        """An unconnected TCP socket (outbound: connect it with `loop.sock_connect`)."""
        return self._new(family, socket.SOCK_STREAM)

    def transparent_tcp(self, source: str) -> socket.socket:
        """An unconnected TCP socket bound to `source`, an address that need not be local
        (IP_TRANSPARENT): how the node proxy connects to the app with the original client's
        address (`ZT:src/proxy.rs` `freebind_connect`). Replies find their way back through the
        connmark and policy route of the in-pod rules. Needs CAP_NET_ADMIN."""
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        sock = self._new(family, socket.SOCK_STREAM)
        try:
            _set_transparent(sock, freebind=self.freebind)
            if self.bind_no_port:
                bind_source(sock, source)
            else:
                sock.bind((source, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    def udp_bind(self, port: int, host: str = "127.0.0.1") -> socket.socket:
        """A bound UDP socket (the DNS proxy's 15053)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self._new(family, socket.SOCK_DGRAM)
        try:
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return sock


def _set_transparent(sock: socket.socket, *, freebind: bool = False) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        if freebind:
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)


def bind_source(sock: socket.socket, source: str) -> None:
    """Bind an outgoing socket to `source` with its port chosen at connect() time
    (IP_BIND_ADDRESS_NO_PORT): `bind(ip, 0)` would search the ephemeral range for a port unused
    by ANY socket on that address, which becomes milliseconds under connection churn."""
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))


class HostSocketFactory(_Factory):
    """Sockets in the caller's own namespace (ztunnel's `DefaultSocketFactory`), unmarked by
    default: the node proxy's node-side sockets, and a stand-in for tests."""

    def __init__(
        self,
        *,
        mark: int | None = None,
        reuse_port: bool = False,
        backlog: int = LISTEN_BACKLOG,
        freebind: bool = False,
        bind_no_port: bool = False,
        dual_stack: bool = True,
    ) -> None:
        super().__init__(
            mark=mark,
            reuse_port=reuse_port,
            backlog=backlog,
            freebind=freebind,
            bind_no_port=bind_no_port,
            dual_stack=dual_stack,
        )


class PodSocketFactory(_Factory):
    """Sockets that belong to the pod network namespace at `netns`, marked 0x539.

    Usable from any thread, including an event loop's (see the module invariants)."""

    def __init__(self, netns: str, *, mark: int | None = INPOD_MARK, reuse_port: bool = True) -> None:
        super().__init__(mark=mark, reuse_port=reuse_port)
        self.netns = netns
        self._fd: int | None = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        """Release the namespace; sockets already made keep working."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def run_in_pod(self, fn: Callable[[], T]) -> T:
        """Call `fn` with the calling thread in the pod's namespace, and switch back."""
        if self._fd is None:
            raise NetnsSwitchError(
                errno.EBADF, f"socket factory for {self.netns} is closed", thread_stranded=False
            )
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                setns(self._fd, CLONE_NEWNET)
            except OSError as exc:
                code = exc.errno or errno.EINVAL
                raise NetnsSwitchError(
                    code, f"setns into {self.netns}: {exc}", thread_stranded=False
                ) from exc
            try:
                return fn()
            finally:
                try:
                    setns(home, CLONE_NEWNET)
                except OSError as exc:  # pragma: no cover - the kernel refusing a held fd
                    code = exc.errno or errno.EINVAL
                    raise NetnsSwitchError(
                        code, f"setns back out of {self.netns}: {exc}", thread_stranded=True
                    ) from exc
        finally:
            os.close(home)

    def _create(self, family: int, kind: int) -> socket.socket:
        return self.run_in_pod(lambda: socket.socket(family, kind))
