"""The capture package's errors, split by blame as everywhere in nodemesh.

`CaptureConfigError` is the caller's input (a port or mark that cannot work); `InstallError` is a
kernel tool (`nft`, `ip`) refusing a step, and carries the tool's own message;
`OriginalDestinationError` is a socket the kernel has no NAT record for (not a redirected
connection), and carries the errno; `NetnsSwitchError` is a namespace switch that failed: when
it says the switch *back* failed, the calling thread is still in the pod's namespace and must
not be used again (ztunnel treats the same case as fatal: `InpodNetns::run` panics).
"""

from __future__ import annotations

from nodemesh.errors import NodemeshError

__all__ = [
    "CaptureConfigError",
    "CaptureError",
    "InstallError",
    "NetnsSwitchError",
    "OriginalDestinationError",
]


class CaptureError(NodemeshError):
    """Base of the in-pod capture's errors."""


class CaptureConfigError(CaptureError, ValueError):
    """A capture configuration that cannot work (clashing ports, a mark outside its mask)."""

    exit_code = 2


class InstallError(CaptureError):
    """`nft` or `ip` refused a step inside a pod's namespace; the message is the tool's."""

    def __init__(self, netns: str, argv: tuple[str, ...], message: str) -> None:
        super().__init__(f"{' '.join(argv)} in {netns}: {message}")
        self.netns = netns
        self.argv = argv
        self.message = message


class OriginalDestinationError(CaptureError, OSError):
    """SO_ORIGINAL_DST failed: the socket's connection has no conntrack/NAT record (ENOENT),
    or the socket is not a TCP socket of a supported family."""


class NetnsSwitchError(CaptureError, OSError):
    """`setns` into a pod's namespace, or back out of it, failed."""

    def __init__(self, errno: int, message: str, *, thread_stranded: bool) -> None:
        super().__init__(errno, message)
        self.thread_stranded = thread_stranded
