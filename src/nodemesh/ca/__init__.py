"""Identity and CA: a root CA (generated or user-supplied) that signs SPIFFE X.509 SVIDs for the
workloads of the requesting node only, a trust bundle that carries roots across a rotation, and
the renewal schedule (half the lifetime, with jitter).

Everything here is pure: time and randomness are arguments, there is no I/O. The gRPC shell is
`nodemesh.controlplane.server` (serving) and `nodemesh.agent.client` (requesting).
"""

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
