"""The runtime's errors, split by blame as everywhere in nodemesh.

`MissingPrivilegeError` and `ClusterNotFoundError`/`ClusterExistsError` are the user's situation and say what
to do; `BuildError` is a step of building that failed inside the sandbox (the sandbox is gone
by the time it is raised, so there is nothing to clean up).
"""

from __future__ import annotations

from nodemesh.errors import NodemeshError

__all__ = [
    "BuildError",
    "ClusterExistsError",
    "ClusterNotFoundError",
    "MissingPrivilegeError",
    "RuntimeFailureError",
]


class RuntimeFailureError(NodemeshError):
    """Base of the local runtime's errors."""


class MissingPrivilegeError(RuntimeFailureError):
    """Not root, or a tool the runtime drives is not installed."""

    exit_code = 77  # EX_NOPERM (sysexits.h)


class ClusterNotFoundError(RuntimeFailureError):
    exit_code = 3


class ClusterExistsError(RuntimeFailureError):
    exit_code = 3


class BuildError(RuntimeFailureError):
    """A step of building the cluster failed; nothing of the cluster survives it."""
