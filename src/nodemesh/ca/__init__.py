"""Identity and CA: a root CA (generated or user-supplied) that signs SPIFFE X.509 SVIDs for the
workloads of the requesting node only, a trust bundle that carries roots across a rotation, and
the renewal schedule (half the lifetime, with jitter).

Everything here is pure: time and randomness are arguments, there is no I/O. The gRPC shell is
`nodemesh.controlplane.server` (serving) and `nodemesh.agent.client` (requesting).

The names are imported lazily (PEP 562): `cryptography` costs ~10 MiB of RSS, and a node proxy,
which only reads SVIDs the agent wrote, must not pay it for `SpiffeId` (issue 5's memory target).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nodemesh.ca.authority import (
        DEFAULT_LIFETIME,
        MAX_LIFETIME,
        CertificateAuthority,
        IssuedCertificate,
        RootCA,
        build_csr,
        generate_key,
        key_pem,
    )
    from nodemesh.ca.authorization import AuthorizationDecision, NodeAuthorizer
    from nodemesh.ca.bundle import TrustBundle, fingerprint, load_pem_chain
    from nodemesh.ca.errors import CaError, CertificateRequestError, NodeAuthorizationError
    from nodemesh.ca.rotation import DEFAULT_ROTATION, NO_JITTER, RotationPolicy
    from nodemesh.ca.spiffe import SpiffeId

_SOURCES = {
    "DEFAULT_LIFETIME": "authority",
    "MAX_LIFETIME": "authority",
    "CertificateAuthority": "authority",
    "IssuedCertificate": "authority",
    "RootCA": "authority",
    "build_csr": "authority",
    "generate_key": "authority",
    "key_pem": "authority",
    "AuthorizationDecision": "authorization",
    "NodeAuthorizer": "authorization",
    "TrustBundle": "bundle",
    "fingerprint": "bundle",
    "load_pem_chain": "bundle",
    "CaError": "errors",
    "CertificateRequestError": "errors",
    "NodeAuthorizationError": "errors",
    "DEFAULT_ROTATION": "rotation",
    "NO_JITTER": "rotation",
    "RotationPolicy": "rotation",
    "SpiffeId": "spiffe",
}


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_LIFETIME",
    "DEFAULT_ROTATION",
    "MAX_LIFETIME",
    "NO_JITTER",
    "AuthorizationDecision",
    "CaError",
    "CertificateAuthority",
    "CertificateRequestError",
    "IssuedCertificate",
    "NodeAuthorizationError",
    "NodeAuthorizer",
    "RootCA",
    "RotationPolicy",
    "SpiffeId",
    "TrustBundle",
    "build_csr",
    "fingerprint",
    "generate_key",
    "key_pem",
    "load_pem_chain",
]
