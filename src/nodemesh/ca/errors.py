"""The CA's errors, split by blame: the caller asked for something the CA will not sign
(`CertificateRequestError`, a gRPC INVALID_ARGUMENT) or is not allowed to
(`NodeAuthorizationError`, PERMISSION_DENIED)."""

from __future__ import annotations

from nodemesh.errors import NodemeshError

__all__ = ["CaError", "CertificateRequestError", "NodeAuthorizationError"]


class CaError(NodemeshError):
    """Base of the CA's errors. `code` is the gRPC status name the server answers with."""

    code: str = "INTERNAL"


class CertificateRequestError(CaError):
    """A malformed or unacceptable request: bad CSR, bad identity, lifetime too long."""

    code = "INVALID_ARGUMENT"


class NodeAuthorizationError(CaError):
    """The calling node may not obtain a certificate for this identity."""

    code = "PERMISSION_DENIED"
