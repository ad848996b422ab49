"""Upstream Cilium conformance: `tests/conformance/cilium_cnp.yaml` through `CiliumEngine`.

The corpus (format: tests/conformance/README.md) holds the pod-to-pod scenarios of
`cilium connectivity test` (cilium-cli `connectivity/builder`, manifests verbatim) and the
allow/deny checks of cilium/cilium `pkg/policy/repository_test.go`. Every `result` copies an
upstream assertion: allow iff both the source's egress and the destination's ingress allow
(reference cilium.md 1.9, "Two sides: ... both must allow").

World construction follows the corpus conventions: cluster name `default`; the `identityLabels`
the corpus lists are what Cilium derives for each pod, and the test first checks that
`World.endpoint` derives the same. Named ports that the corpus gives without a number
(repository_test.go never resolves names to numbers: "numeric port 80 is NOT the named port
port-80") get a distinct unused container port, so a name can only match by name. ICMP probes
are pings: ICMP type 8 (EchoRequest), carried in the port as Cilium's `icmp.go` does.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.model.loader import load_text
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import World
from nodemesh.policy.cilium import CiliumEngine
from nodemesh.policy.flow import Endpoint, FlowContext, HttpRequest, Protocol
from nodemesh.policy.ir import Direction

CORPUS = Path(__file__).parents[1] / "conformance" / "cilium_cnp.yaml"
ECHO_REQUEST = 8  # ICMPv4 EchoRequest (icmp.go icmpIpv4TypeNameToCode)
SYNTHETIC_PORT_BASE = 40000

Case = dict[str, Any]


def _cases() -> list[Case]:
    data = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    cases: list[Case] = data["cases"]
    return cases


def _world_docs(case: Case) -> list[dict[str, Any]]:
    world = case["world"]
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns["name"], "labels": ns.get("labels", {})},
        }
        for ns in world.get("namespaces", [])
    ]
    synthetic = SYNTHETIC_PORT_BASE
    for i, w in enumerate(world["workloads"]):
        ports = []
        for p in w.get("ports", []):
            number = p.get("port")
            if number is None:
                number, synthetic = synthetic, synthetic + 1
            port = {"containerPort": number, "protocol": p.get("protocol", "TCP")}
            if p.get("name"):
                port["name"] = p["name"]
            ports.append(port)
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": w["name"], "namespace": w["namespace"], "labels": w.get("labels", {})},
                "spec": {
                    "serviceAccountName": w.get("serviceAccount", "default"),
                    "containers": [{"name": "app", "ports": ports}],
                },
                "status": {"podIP": w.get("ip") or f"10.244.0.{10 + i}"},
            }
        )
    return docs


def _build(case: Case) -> tuple[World, CiliumEngine]:
    text = yaml.safe_dump_all([*_world_docs(case), *case["policies"]], sort_keys=False)
    world = World.build(parse_documents(load_text(text, f"{case['name']}.yaml")))
    return world, CiliumEngine(world)


def _externals(case: Case) -> dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = {}
    for i, ext in enumerate(case["world"].get("externals") or []):
        out[ext["name"]] = ipaddress.ip_address(ext.get("ip") or f"203.0.113.{10 + i}")
    return out


def _endpoint(world: World, case: Case, ref: str) -> Endpoint:
    externals = _externals(case)
    if ref == "reserved:world":
        return world.external_endpoint(externals.get("world", ipaddress.ip_address("203.0.113.200")))
    if ref.startswith("external:"):
        return world.external_endpoint(externals[ref.removeprefix("external:")])
    if ref.startswith("ip:"):
        return world.external_endpoint(ipaddress.ip_address(ref.removeprefix("ip:")))
    ns, name = ref.split("/", 1)
    pods = world.find_workloads(ns, name)
    assert pods, f"probe names unknown workload {ref}"
    return world.endpoint(pods[0])


def _flow(world: World, case: Case, probe: dict[str, Any]) -> FlowContext:
    src, dst = _endpoint(world, case, probe["from"]), _endpoint(world, case, probe["to"])
    protocol = Protocol(probe["protocol"])
    if protocol is Protocol.ICMP:
        return FlowContext(src, dst, ECHO_REQUEST, Protocol.ICMP)
    port = probe.get("port")
    if port is None:
        port = dst.named_port(probe["port_name"], protocol)
        assert port is not None, f"{probe['to']} has no port named {probe['port_name']}"
    request = None
    if probe.get("http"):
        http = probe["http"]
        headers = {k.lower(): str(v) for k, v in (http.get("headers") or {}).items()}
        request = HttpRequest(http.get("method", "GET"), http.get("path", "/"), f"{dst.ip}:{port}", headers)
    return FlowContext(src, dst, port, protocol, request)


def _allowed(engine: CiliumEngine, ctx: FlowContext) -> tuple[bool, list[str]]:
    reasons = []
    ok = True
    for direction in (Direction.EGRESS, Direction.INGRESS):
        decision = (
            engine.evaluate_l7(ctx, direction)
            if ctx.request is not None
            else engine.evaluate_l4(ctx, direction)
        )
        if decision is None:
            reasons.append(f"{direction.value}: no policy")
            continue
        reasons.append(f"{direction.value}: {decision.verdict.value} {decision.reason}")
        ok = ok and decision.allowed
    return ok, reasons


CASES = _cases()


def test_corpus_is_not_empty() -> None:
    """The corpus carries the connectivity-test and repository_test.go cases (README.md)."""
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_upstream_case(case: Case) -> None:
    """Each probe's `result` is upstream's assertion for that flow (README.md, "Every `result`
    copies an upstream assertion"); both the source egress and destination ingress must allow."""
    world, engine = _build(case)
    for w in case["world"]["workloads"]:
        expected = w.get("identityLabels")
        if expected:
            ep = world.endpoint(world.find_workloads(w["namespace"], w["name"])[0])
            derived = {k.removeprefix("k8s:"): v for k, v in ep.identity_labels.items()}
            assert {k: derived.get(k) for k in expected} == expected, f"identity labels of {w['name']}"
    failures = []
    for probe in case["expect"]:
        if probe.get("ignored"):
            continue
        ctx = _flow(world, case, probe)
        allowed, reasons = _allowed(engine, ctx)
        if allowed != (probe["result"] == "allow"):
            what = f"{probe['from']} -> {probe['to']} {probe['protocol']} {probe.get('port', probe.get('port_name'))}"
            failures.append(
                f"{what} {probe.get('http') or ''}: expected {probe['result']}; {'; '.join(reasons)}"
            )
        if probe.get("deny_mode", "").startswith("http-403"):
            decisions = [engine.evaluate_l7(ctx, d) for d in (Direction.EGRESS, Direction.INGRESS)]
            assert any(d is not None and d.status == 403 for d in decisions), f"{probe}: expected an HTTP 403"
    assert not failures, "\n".join(failures)
