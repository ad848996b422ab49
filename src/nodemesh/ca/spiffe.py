"""SPIFFE identities as Istio spells them: `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`.

The parser follows ztunnel's `Identity::from_str` (ZT:src/identity/manager.rs): after
`spiffe://` there must be exactly five `/`-separated parts, the second and fourth being the
literals `ns` and `sa`. Anything else is not a workload identity.

Node credentials use Kubernetes' node identity instead (user `system:node:<nodeName>` in group
`system:nodes`, kubernetes.io "Using Node Authorization"), carried in the subject of a client
certificate, so that a workload SVID can never be mistaken for a node and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NODE_GROUP", "NODE_USER_PREFIX", "SpiffeId"]

SCHEME = "spiffe://"
NODE_USER_PREFIX = "system:node:"
NODE_GROUP = "system:nodes"


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A workload identity: trust domain, namespace, service account."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        for part in (self.trust_domain, self.namespace, self.service_account):
            if not part or "/" in part:
                raise ValueError(f"invalid SPIFFE identity part {part!r}")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """`spiffe://td/ns/NS/sa/SA` -> SpiffeId; ValueError otherwise."""
        if not text.startswith(SCHEME):
            raise ValueError(f"{text!r} is not a SPIFFE id (must start with {SCHEME})")
        parts = text[len(SCHEME) :].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise ValueError(f"{text!r} is not spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>")
        return cls(parts[0], parts[2], parts[4])

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri
