"""What is node-proxy-specific about the socket seam; the seam itself is
`nodemesh.capture.sockets` (`SocketFactory`, `HostSocketFactory`, `PodSocketFactory`, ztunnel's
`proxy::SocketFactory`).

`LISTEN_BACKLOG` is the node proxy's listen backlog for sockets in its own namespace: pass it
as `HostSocketFactory(backlog=LISTEN_BACKLOG, ...)` (in-pod listeners keep ztunnel's 128).

`OriginalDestination` is the second seam: where a captured connection was really going
(SO_ORIGINAL_DST after the in-pod REDIRECT, `nodemesh.capture.sockets.original_dst`). Tests and
benchmarks without capture plug in a fixed mapping instead.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

__all__ = ["LISTEN_BACKLOG", "OriginalDestination"]

LISTEN_BACKLOG = 1024

OriginalDestination = Callable[[socket.socket], tuple[str, int]]
"""Where an accepted (captured) connection was headed: `(ip, port)`; OSError if unknown."""
