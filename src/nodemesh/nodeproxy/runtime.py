"""The node proxy's event loop, its owned tasks, and the allocator setting it runs best with.

- Event loop: uvloop when importable (PERFORMANCE.md: uvloop with the Protocol API costs 5-10%
  less CPU than asyncio, more for bulk and new streams), plain asyncio as the fallback; the
  choice is explicit (`new_event_loop(use_uvloop=...)`) so a crash in one can be routed around.
- Tasks: every task is named and owned by a `TaskSet` that keeps a reference (asyncio only keeps
  weak ones), logs a task that died with an exception, and cancels and awaits the rest on close:
  no orphan tasks, no "Task exception was never retrieved".
- Allocator: asyncio's and uvloop's SSL transports read 256 KiB at a time; glibc serves such
  blocks with mmap/munmap when they are above its mmap threshold, which PERFORMANCE.md measured
  as the difference between 0.9x and 1.4x haproxy. `tune_allocator()` raises the thresholds with
  `mallopt` (the same effect as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_). It is process-wide,
  so only a node proxy's entry point calls it, never library code.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Coroutine
from typing import Any

__all__ = ["TaskSet", "connect_socket", "ip_of", "loop_name", "new_event_loop", "tune_allocator"]

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A uvloop loop if asked for and installed, else the standard asyncio loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a pinned dependency
            log.warning("uvloop is not installed; using the asyncio event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@functools.lru_cache(maxsize=4096)
def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`ipaddress.ip_address`, memoized: the node proxy parses the same few peer and pod
    addresses several times per connection (~5 us each, measured with cProfile)."""
    return ipaddress.ip_address(text)


async def connect_socket(sock: socket.socket, address: tuple[str, int]) -> None:
    """Connect a non-blocking socket to a numeric `address` on the running loop.

    Not `loop.sock_connect`: uvloop's resolves every address with getaddrinfo in libuv's thread
    pool, numeric or not, so each connection paid a thread hop (futex + eventfd, measured at 0.5-2
    ms of a new connection's latency on the live cluster). Every address the node proxy dials is
    an IP, so the connect is issued directly and completion is awaited as writability."""
    try:
        sock.connect(address)
        return
    except BlockingIOError:
        pass
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def writable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_writer(fd, writable)
    try:
        await done
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err) if err != errno.EINPROGRESS else "connect in progress")


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = int(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) == 1
    return int(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) == 1 and ok


class TaskSet:
    """Owns named tasks: keeps them alive, logs their failures, cancels them on close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"task set {self.name} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """No new task may start (the owner is shutting down)."""
        return self._closed

    async def close(self, grace: float = 0.0) -> None:
        """Wait up to `grace` seconds for the tasks to finish, then cancel what is left."""
        self._closed = True
        if grace > 0 and self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
