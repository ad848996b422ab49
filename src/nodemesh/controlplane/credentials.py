"""Node credentials on disk: what `up` hands each node agent so it can talk to the control plane.

A node credential is a client certificate for `system:node:<node>` (Kubernetes' node identity,
see `nodemesh.ca.spiffe`), its private key, and the roots to verify the control plane with. It
is written as three PEM files in one directory (key file mode 0600), like a kubelet's
`--kubeconfig` client certificate pair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NodeCredential", "write_private"]

CERT = "node.crt"
KEY = "node.key"
CA = "ca.crt"


def write_private(path: Path, data: str) -> None:
    """Write `data` atomically with mode 0600 (tmp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class NodeCredential:
    node: str
    cert_pem: str
    key_pem: str
    ca_pem: str

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(directory / CERT, self.cert_pem)
        write_private(directory / KEY, self.key_pem)
        write_private(directory / CA, self.ca_pem)
        return directory

    @classmethod
    def load(cls, directory: Path, node: str) -> NodeCredential:
        return cls(
            node,
            (directory / CERT).read_text(),
            (directory / KEY).read_text(),
            (directory / CA).read_text(),
        )
