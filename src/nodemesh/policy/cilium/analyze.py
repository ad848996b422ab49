"""Cilium static analysis: policies that cannot work as written (NM301-NM307).

- NM301 (Warning) an endpointSelector that selects no workload;
- NM302 (Warning) http rules made ineffective by an L4-only allow of the same peers and port
  ("the layer 7 portions of the latter rule will have no effect", language.rst);
- NM303 (Info) a CIDR peer inside the pod CIDR: CIDR rules never match pods ("CIDR rules do not
  apply to traffic where both sides of the connection are ... managed by Cilium");
- NM304 (Warning) a CNP endpointSelector naming another namespace ("EndpointSelector always
  applies in namespace of the policy resource");
- NM305 (Info) a peer nodemesh cannot resolve, because it needs state nodemesh does not have:
  toFQDNs (IPs learnt by the DNS proxy), toServices (Endpoints of selector-less Services),
  fromGroups/toGroups, CiliumCIDRGroups; such a peer matches nothing;
- NM306 (Info) fromRequires/toRequires, deprecated (MaxItems=0 in Cilium 1.20);
- NM307 (Warning) http rules with enableDefaultDeny false: unmatched requests still get 403
  ("EnableDefaultDeny does not apply to layer-7 policy", intro.rst).

Invariants: reads the compiled rules and the world, changes neither. NM302 needs what applies to
each workload, which the engine computes (`allows_for`); each (shadowed, shadowing) pair of
rules is reported once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nodemesh.model.loader import format_path
from nodemesh.model.world import World
from nodemesh.policy.cilium.compile import Compiled, Entry
from nodemesh.policy.cilium.conditions import UnresolvedPeer
from nodemesh.policy.cilium.selectors import NS_KEY
from nodemesh.policy.conditions import CidrCondition, Network, parse_network
from nodemesh.policy.findings import Finding, Severity
from nodemesh.policy.flow import Endpoint
from nodemesh.policy.ir import Clause, Direction

__all__ = ["findings"]


def findings(
    world: World,
    compiled: Sequence[Compiled],
    allows_for: Callable[[Endpoint, Direction], Sequence[Entry] | None],
) -> list[Finding]:
    """Every NM3xx finding (listed above) for the `compiled` rules of `world`. `allows_for` gives
    the allow entries that apply to an endpoint in a direction (None: no policy selects it)."""
    out: list[Finding] = []
    endpoints = [world.endpoint(w) for w in world.workloads]
    pod_cidr = parse_network(world.settings.pod_cidr)
    for c in compiled:
        out.extend(_rule_findings(c, endpoints, pod_cidr))
    seen: set[tuple[int, int]] = set()
    for ep in endpoints:
        for direction in Direction:
            allows = allows_for(ep, direction)
            if allows is None:
                continue
            for shadowed, by in _ineffective_l7(allows):
                if (id(shadowed.rule), id(by.rule)) in seen:
                    continue
                seen.add((id(shadowed.rule), id(by.rule)))
                out.append(
                    _finding(
                        "NM302",
                        Severity.WARNING,
                        shadowed,
                        f"the http rules of {shadowed.label} have no effect for {ep}: "
                        f"{by.ref} {by.label} "
                        'allows the same peers on the same port at L4 (Cilium: "the layer 7 portions of '
                        'the latter rule will have no effect")',
                    )
                )
    return out


def _finding(code: str, severity: Severity, entry: Entry, message: str) -> Finding:
    return Finding(
        code, severity, str(entry.ref), message, entry.policy.file, entry.line or entry.policy.line
    )


def _ineffective_l7(allows: Sequence[Entry]) -> list[tuple[Entry, Entry]]:
    out: list[tuple[Entry, Entry]] = []
    for l7 in allows:
        if l7.http is None:
            continue
        for plain in allows:
            if plain.http is not None or plain.dns:
                continue
            same_peers = plain.peer is None or plain.peer == l7.peer
            same_port = plain.ports is None or (
                l7.ports is not None and not set(plain.ports.matches).isdisjoint(l7.ports.matches)
            )
            void = plain.peer is not None and any(m.void for m in plain.peer.matches)
            if same_peers and same_port and not void:
                out.append((l7, plain))
                break
    return out


def _rule_findings(c: Compiled, endpoints: Sequence[Endpoint], pod_cidr: Network) -> list[Finding]:
    out: list[Finding] = []
    resource = str(c.ref)
    file = c.doc.location.file
    where = "" if c.at == ("spec",) else f"{format_path(c.at)}: "
    if not c.subject.node and not any(c.subject.selects(ep) for ep in endpoints):
        line = c.doc.location.line_of((*c.at, "endpointSelector"))
        out.append(
            Finding(
                "NM301",
                Severity.WARNING,
                resource,
                f"{where}{c.subject.describe()} selects no workload",
                file,
                line,
            )
        )
    sel = c.rule.endpoint_selector
    if c.namespace and sel is not None:
        named = sel.match_labels.get(f"k8s:{NS_KEY}") or sel.match_labels.get(NS_KEY)
        if named is not None and named != c.namespace:
            line = c.doc.location.line_of((*c.at, "endpointSelector"))
            out.append(
                Finding(
                    "NM304",
                    Severity.WARNING,
                    resource,
                    f"{where}endpointSelector names namespace {named!r}, but a CiliumNetworkPolicy always "
                    f'applies in its own namespace {c.namespace!r} ("EndpointSelector always applies in '
                    'namespace of the policy resource")',
                    file,
                    line,
                )
            )
    for d in (c.ingress, c.egress):
        if d is None:
            continue
        entries = (*d.allows, *d.denies)
        for entry in entries:
            for cond in _conditions(entry.peer):
                if isinstance(cond, CidrCondition) and all(
                    n.version == pod_cidr.version and n.subnet_of(pod_cidr)  # type: ignore[arg-type]
                    for n in cond.networks
                ):
                    out.append(
                        _finding(
                            "NM303",
                            Severity.INFO,
                            entry,
                            f"{entry.label}: {cond.describe()} lies inside the pod CIDR {pod_cidr}; "
                            'CIDR rules never match pods ("CIDR rules do not apply to traffic where both '
                            'sides of the connection are ... managed by Cilium"); use '
                            "fromEndpoints/toEndpoints",
                        )
                    )
                elif isinstance(cond, UnresolvedPeer):
                    out.append(_finding("NM305", Severity.INFO, entry, f"{entry.label}: {cond.describe()}"))
        if d.requires:
            first = (d.allows or d.denies)[0]
            out.append(
                _finding(
                    "NM306",
                    Severity.INFO,
                    first,
                    "fromRequires/toRequires is deprecated (MaxItems=0 in Cilium 1.20); nodemesh applies it "
                    "as an extra requirement on every allowed peer",
                )
            )
        if not d.default_deny:
            for entry in d.allows:
                if entry.http is not None:
                    out.append(
                        _finding(
                            "NM307",
                            Severity.WARNING,
                            entry,
                            f"{entry.label} has http rules although enableDefaultDeny is false: requests "
                            'matching none of them are still denied with 403 ("EnableDefaultDeny does not '
                            'apply to layer-7 policy")',
                        )
                    )
    return out


def _conditions(clause: Clause | None) -> list[object]:
    if clause is None:
        return []
    return [c for m in clause.matches for c in m.conditions]
