"""Linux namespace primitives through ctypes: unshare, setns, mount, and sockets made in a netns.

Python 3.11 has neither `os.setns` nor `os.unshare` (both arrived in 3.12), so this module calls
libc directly. The rules it follows (ztunnel's `src/test_helpers/netns.rs` and STYLE.md):

- A network namespace is a per-thread attribute. The event loop's thread never changes its
  namespace: `socket_in` and `create_netns` do their switching in a short-lived thread, and a
  socket keeps the namespace it was created in for its whole life, so the loop can use it.
- Mount and PID namespaces are joined only by single-threaded processes (the kernel refuses
  `setns(CLONE_NEWNS)` to a multi-threaded caller): `enter_sandbox` runs in the CLI before any
  thread starts, `enter_pod` in a child between fork and exec.
- A namespace created here outlives its creator only through a bind mount of its
  `/proc/thread-self/ns/net` file inside the sandbox's private mount namespace, so when the
  sandbox's last process exits, every namespace it made goes with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUTS",
    "NamespaceError",
    "create_netns",
    "enter_pod",
    "enter_sandbox",
    "in_netns",
    "join_netns",
    "make_mounts_private",
    "mount",
    "set_parent_death_signal",
    "setns",
    "socket_in",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
PR_SET_PDEATHSIG = 1

T = TypeVar("T")


class NamespaceError(OSError):
    """A namespace syscall failed; `errno` and the operation are kept for the message."""


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded once per process: `find_library` runs `ldconfig -p` in a subprocess on every call,
    # which cost ~3 ms per `setns` on the node proxy's event loop (two per transparent dial).
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc().unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns({nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(
        _libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {source} on {target}",
    )


def make_mounts_private() -> None:
    """Stop mount events from propagating back to the parent namespace (systemd makes `/`
    shared, so without this every bind mount made in the sandbox would appear on the host)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def set_parent_death_signal(signum: int) -> None:
    _check(_libc().prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signum), 0, 0, 0), "prctl(PDEATHSIG)")


def _setns_path(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, nstype)
    finally:
        os.close(fd)


def _in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread and return its result (or raise its exception): a thread whose
    namespace may change dies with the change, never leaking it to the caller's thread."""
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    t = threading.Thread(target=run, name="netns-switch")
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return box[0]


def create_netns(path: str) -> None:
    """A new, empty network namespace, kept alive by a bind mount on `path` (`ip netns add`)."""

    def make() -> None:
        with open(path, "w"):
            pass
        unshare(CLONE_NEWNET)
        mount("/proc/thread-self/ns/net", path, None, MS_BIND)

    _in_thread(make)


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Call `fn` in a thread that has joined the network namespace at `path`."""

    def run() -> T:
        _setns_path(path, CLONE_NEWNET)
        return fn()

    return _in_thread(run)


def socket_in(path: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that belongs to the network namespace at `path`, usable from any thread."""
    return in_netns(path, lambda: socket.socket(family, kind))


def join_netns(path: str) -> None:
    """In a child before exec (or a short-lived thread): join the network namespace at `path`."""
    _setns_path(path, CLONE_NEWNET)


def enter_pod(netns: str, binds: dict[str, str], hostname: str | None) -> None:
    """In a child before exec: join the pod's network namespace, take a private mount and UTS
    namespace, and bind the pod's own files (resolv.conf, hosts) over the machine's."""
    _setns_path(netns, CLONE_NEWNET)
    unshare(CLONE_NEWNS | CLONE_NEWUTS)
    mount(None, "/", None, MS_REC | MS_SLAVE)
    for source, target in binds.items():
        mount(source, target, None, MS_BIND)
    if hostname:
        socket.sethostname(hostname)


def enter_sandbox(pid: int) -> None:
    """Join the mount and PID namespaces of the sandbox whose init is `pid` (host PID).

    After this the sandbox's private files (its netns mounts) are visible, and children are
    born inside its PID namespace, so they die with it. The caller must be single-threaded."""
    for kind, flag in (("pid", CLONE_NEWPID), ("mnt", CLONE_NEWNS)):
        _setns_path(f"/proc/{pid}/ns/{kind}", flag)
