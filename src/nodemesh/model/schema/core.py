"""Core Kubernetes kinds: Namespace, ServiceAccount, Pod, Deployment, Service; and nodemesh's
own Cluster resource.

Only the fields nodemesh acts on are typed; fields Kubernetes users commonly carry that nodemesh
does not act on (probes, resources, security contexts, volumes) are accepted and ignored, so
`kubectl get -o yaml` output loads. Anything else is rejected as unknown.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar, Literal

from pydantic import Field

from nodemesh.model.schema.base import Document, LabelSelectorModel, Problem, Spec, register

__all__ = [
    "Cluster",
    "ClusterSpec",
    "Container",
    "ContainerPort",
    "Deployment",
    "Namespace",
    "Pod",
    "PodSpec",
    "Service",
    "ServiceAccount",
    "ServicePort",
]

Ignored = dict[str, object] | list[object] | str | int | bool | None


class ContainerPort(Spec):
    container_port: int = Field(ge=1, le=65535)
    name: str | None = Field(default=None, max_length=15)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    host_port: int | None = None
    host_ip: str | None = Field(default=None, alias="hostIP")


class EnvVar(Spec):
    name: str
    value: str = ""
    value_from: Ignored = None


class Container(Spec):
    name: str
    image: str | None = None
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    ports: list[ContainerPort] = Field(default_factory=list)
    working_dir: str | None = None
    # accepted, not acted on
    image_pull_policy: Ignored = None
    resources: Ignored = None
    readiness_probe: Ignored = None
    liveness_probe: Ignored = None
    startup_probe: Ignored = None
    security_context: Ignored = None
    volume_mounts: Ignored = None
    termination_message_path: Ignored = None
    termination_message_policy: Ignored = None


class PodSpec(Spec):
    containers: list[Container] = Field(min_length=1)
    service_account_name: str | None = None
    service_account: str | None = None  # deprecated alias of serviceAccountName
    node_name: str | None = None
    host_network: bool = False
    init_containers: Ignored = None
    restart_policy: Ignored = None
    termination_grace_period_seconds: Ignored = None
    dns_policy: Ignored = None
    security_context: Ignored = None
    scheduler_name: Ignored = None
    volumes: Ignored = None
    tolerations: Ignored = None
    node_selector: Ignored = None
    affinity: Ignored = None
    priority: Ignored = None
    enable_service_links: Ignored = None
    preemption_policy: Ignored = None

    @property
    def sa_name(self) -> str:
        return self.service_account_name or self.service_account or "default"


class PodStatus(Spec):
    """`status`: only podIP is used (by ipBlock and CIDR rules in `nodemesh trace`)."""

    model_config = Spec.model_config | {"extra": "ignore"}

    pod_ip: str | None = Field(default=None, alias="podIP")
    host_ip: str | None = Field(default=None, alias="hostIP")


@register("", "Namespace", ("v1",))
class Namespace(Document):
    api_version: Literal["v1"]
    kind: Literal["Namespace"]
    spec: Ignored = None
    status: Ignored = None
    namespaced: ClassVar[bool] = False


@register("", "ServiceAccount", ("v1",))
class ServiceAccount(Document):
    api_version: Literal["v1"]
    kind: Literal["ServiceAccount"]
    secrets: Ignored = None
    automount_service_account_token: Ignored = None


@register("", "Pod", ("v1",))
class Pod(Document):
    api_version: Literal["v1"]
    kind: Literal["Pod"]
    spec: PodSpec
    status: PodStatus | None = None

    def semantic_problems(self) -> list[Problem]:
        if self.status and self.status.pod_ip:
            try:
                ipaddress.ip_address(self.status.pod_ip)
            except ValueError:
                return [(("status", "podIP"), f"{self.status.pod_ip!r} is not an IP address")]
        return _container_problems(self.spec, ("spec",))


class TemplateMeta(Spec):
    """A pod template's metadata: labels and annotations (name and namespace come from the owner)."""

    model_config = Spec.model_config | {"extra": "ignore"}

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(Spec):
    metadata: TemplateMeta | None = None
    spec: PodSpec


class DeploymentSpec(Spec):
    replicas: int = Field(default=1, ge=0)
    selector: LabelSelectorModel
    template: PodTemplate
    strategy: Ignored = None
    revision_history_limit: Ignored = None
    progress_deadline_seconds: Ignored = None
    min_ready_seconds: Ignored = None


@register("apps", "Deployment", ("v1",))
class Deployment(Document):
    api_version: Literal["apps/v1"]
    kind: Literal["Deployment"]
    spec: DeploymentSpec
    status: Ignored = None

    def semantic_problems(self) -> list[Problem]:
        from nodemesh.policy.selector import LabelSelector

        out = self.spec.selector.semantic_problems(("spec", "selector"))
        labels = self.spec.template.metadata.labels if self.spec.template.metadata else {}
        if not out and not LabelSelector.from_model(self.spec.selector).matches(labels):
            out.append(
                (
                    ("spec", "selector"),
                    "selector does not match the template labels (Kubernetes rejects this)",
                )
            )
        return out + _container_problems(self.spec.template.spec, ("spec", "template", "spec"))


def _container_problems(spec: PodSpec, at: tuple[str, ...]) -> list[Problem]:
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for ci, container in enumerate(spec.containers):
        for pi, port in enumerate(container.ports):
            if port.name is not None:
                if port.name in seen:
                    out.append(
                        ((*at, "containers", ci, "ports", pi, "name"), f"duplicate port name {port.name!r}")
                    )
                seen[port.name] = port.container_port
    return out


class ServicePort(Spec):
    port: int = Field(ge=1, le=65535)
    target_port: int | str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    name: str | None = None
    app_protocol: str | None = None
    node_port: int | None = None


class ServiceSpec(Spec):
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = Field(default_factory=list)
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    cluster_ips: list[str] | None = Field(default=None, alias="clusterIPs")
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    session_affinity: Ignored = None
    ip_families: Ignored = None
    ip_family_policy: Ignored = None
    internal_traffic_policy: Ignored = None
    external_traffic_policy: Ignored = None
    external_name: str | None = None


@register("", "Service", ("v1",))
class Service(Document):
    api_version: Literal["v1"]
    kind: Literal["Service"]
    spec: ServiceSpec
    status: Ignored = None

    def semantic_problems(self) -> list[Problem]:
        out: list[Problem] = []
        names = [p.name for p in self.spec.ports]
        if len(self.spec.ports) > 1 and any(n is None for n in names):
            out.append((("spec", "ports"), "every port needs a name when a Service has more than one"))
        if self.spec.cluster_ip not in (None, "", "None"):
            try:
                ipaddress.ip_address(self.spec.cluster_ip)
            except ValueError:
                out.append((("spec", "clusterIP"), f"{self.spec.cluster_ip!r} is not an IP address"))
        return out


class ClusterSpec(Spec):
    """nodemesh's own Cluster resource: the local cluster's shape and data path."""

    nodes: int = Field(default=2, ge=1, le=32)
    mode: Literal["none", "ambient", "kernel"] = "ambient"
    pod_cidr: str = Field(default="10.244.0.0/16", alias="podCIDR")
    service_cidr: str = Field(default="10.96.0.0/16", alias="serviceCIDR")
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"


@register("nodemesh.io", "Cluster", ("v1alpha1",))
class Cluster(Document):
    api_version: Literal["nodemesh.io/v1alpha1"]
    kind: Literal["Cluster"]
    spec: ClusterSpec = Field(default_factory=ClusterSpec)
    namespaced: ClassVar[bool] = False

    def semantic_problems(self) -> list[Problem]:
        out: list[Problem] = []
        nets = {}
        for field, value in (("podCIDR", self.spec.pod_cidr), ("serviceCIDR", self.spec.service_cidr)):
            try:
                nets[field] = ipaddress.ip_network(value)
            except ValueError:
                out.append((("spec", field), f"{value!r} is not a CIDR"))
        if len(nets) == 2 and nets["podCIDR"].overlaps(nets["serviceCIDR"]):
            out.append((("spec", "serviceCIDR"), "overlaps the pod CIDR"))
        return out
