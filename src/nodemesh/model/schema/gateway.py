"""Gateway API `Gateway` (gateway.networking.k8s.io v1, v1beta1), typed.

nodemesh reads Gateways for one purpose: a Gateway of class `istio-waypoint` is a waypoint
(Istio Ambient: "a waypoint is a Gateway with gatewayClassName istio-waypoint"; the
`istio.io/waypoint-for` label says which traffic it serves, default `service`); `world.py`
reads `spec.gatewayClassName`. Field names and constraints follow the Gateway API CRD
(`apis/v1/gateway_types.go`): at least one listener, at most 64; listener names are
`SectionName`s and unique; ports 1-65535; `protocol` is a `ProtocolType` (`HTTP`, `HTTPS`,
`TLS`, `TCP`, `UDP`, Istio's `HBONE`, or a domain-prefixed custom protocol).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from nodemesh.model.schema.base import Document, LabelSelectorModel, Problem, Spec, register

__all__ = ["Gateway", "GatewaySpec", "Listener"]

_SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PROTOCOL = re.compile(
    r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$"
)
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Ignored = dict[str, object] | list[object] | str | int | bool | None


class RouteNamespaces(Spec):
    from_: Literal["All", "Same", "Selector"] = Field(default="Same", alias="from")
    selector: LabelSelectorModel | None = None


class RouteGroupKind(Spec):
    group: str = "gateway.networking.k8s.io"
    kind: str


class AllowedRoutes(Spec):
    namespaces: RouteNamespaces | None = None
    kinds: list[RouteGroupKind] = Field(default_factory=list)


class Listener(Spec):
    name: str
    hostname: str | None = None
    port: int = Field(ge=1, le=65535)
    protocol: str
    tls: Ignored = None
    allowed_routes: AllowedRoutes | None = None


class GatewayAddress(Spec):
    type: str = "IPAddress"
    value: str = Field(min_length=1, max_length=253)


class GatewayInfrastructure(Spec):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    parameters_ref: Ignored = None


class GatewaySpec(Spec):
    gateway_class_name: str = Field(min_length=1, max_length=253)
    listeners: list[Listener] = Field(min_length=1, max_length=64)
    addresses: list[GatewayAddress] = Field(default_factory=list, max_length=16)
    infrastructure: GatewayInfrastructure | None = None


@register("gateway.networking.k8s.io", "Gateway", ("v1", "v1beta1"))
class Gateway(Document):
    """A Gateway API Gateway; class `istio-waypoint` makes it an Istio Ambient waypoint."""

    api_version: Literal["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"]
    kind: Literal["Gateway"]
    spec: GatewaySpec
    status: Ignored = None

    def semantic_problems(self) -> list[Problem]:
        out: list[Problem] = []
        seen: set[str] = set()
        for i, listener in enumerate(self.spec.listeners):
            at = ("spec", "listeners", i)
            if not _SECTION_NAME.match(listener.name) or len(listener.name) > 253:
                out.append(
                    ((*at, "name"), f"{listener.name!r} is not a valid listener name (a DNS subdomain)")
                )
            if listener.name in seen:
                out.append(
                    ((*at, "name"), f"listener name {listener.name!r} must be unique within the Gateway")
                )
            seen.add(listener.name)
            if not _PROTOCOL.match(listener.protocol):
                out.append(
                    (
                        (*at, "protocol"),
                        f"{listener.protocol!r} is not a valid protocol "
                        "(HTTP, HTTPS, TLS, TCP, UDP, HBONE, or domain/name)",
                    )
                )
            if listener.hostname is not None and not _HOSTNAME.match(listener.hostname):
                out.append(((*at, "hostname"), f"{listener.hostname!r} is not a valid hostname"))
        return out
