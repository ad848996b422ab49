"""Policy engine throughput: decisions per second at 1, 1,000 and 10,000 policies, and compile time.

A synthetic mesh: namespaces of 10 workloads each (apps a0..a9, one ServiceAccount each, pod IPs
assigned), and policies spread evenly over the three APIs (NetworkPolicy, CiliumNetworkPolicy,
AuthorizationPolicy), ~100 per namespace, each selecting one app and allowing a few peers on a
few ports. Flows are drawn at random (fixed seed) between workloads of the same namespace, so
roughly half are allowed.

Measured, one core, in this process:
- validate: parsing + schema validation of every document (pydantic), for reference;
- compile:  PolicyEngine(world): the three APIs into the IR;
- L4 cold:  source egress + destination verdicts for each flow, first time (caches empty);
- L4 warm:  the same flows again: the steady state of a node proxy (verdicts cached per
            (source, destination, port), as Cilium's policy map);
- per-API:  the three APIs' own L4 evaluations at the destination, uncached at engine level;
- L7 trace: full traces of an HTTP request (every point, with L7), ambient mode.

Run: .venv/bin/python bench/policy_eval.py [--sizes 1,1000,10000] [--flows 20000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Iterator

from nodemesh.model.loader import RawDocument, SourceLocation
from nodemesh.model.validate import parse_documents
from nodemesh.model.world import Workload, World
from nodemesh.policy.engine import PolicyEngine, Route
from nodemesh.policy.flow import FlowContext, HttpRequest
from nodemesh.policy.ir import Direction
from nodemesh.policy.istio import IstioView

APPS = 10
PER_NS = 100


def _raw(body: dict[str, object]) -> RawDocument:
    return RawDocument(body, SourceLocation("<bench>", 0, {}))


def _documents(policies: int) -> Iterator[dict[str, object]]:
    namespaces = max(1, (policies + PER_NS - 1) // PER_NS)
    for n in range(namespaces):
        ns = f"ns{n}"
        yield {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        for a in range(APPS):
            yield {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"a{a}",
                    "namespace": ns,
                    "labels": {"app": f"a{a}", "tier": f"t{a % 3}"},
                },
                "spec": {
                    "serviceAccountName": f"sa{a}",
                    "containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]}],
                },
                "status": {"podIP": f"10.{n // 250}.{n % 250}.{a + 10}"},
            }
    rng = random.Random(7)
    for i in range(policies):
        ns = f"ns{i // PER_NS}"
        # Each app is governed by one API (a0-a2 NetworkPolicy, a3-a5 Cilium, a6-a9 Istio), so a
        # flow's verdict is that API's, and about half the flows are allowed.
        app = rng.randrange(APPS)
        kind = 0 if app < 3 else 1 if app < 6 else 2
        target = f"a{app}"
        peers = [f"a{rng.randrange(APPS)}" for _ in range(3)]
        port = rng.choice([8080, 8081, 9090])
        if kind == 0:
            yield {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": f"np{i}", "namespace": ns},
                "spec": {
                    "podSelector": {"matchLabels": {"app": target}},
                    "ingress": [
                        {
                            "from": [{"podSelector": {"matchLabels": {"app": p}}} for p in peers],
                            "ports": [{"port": port}],
                        }
                    ],
                },
            }
        elif kind == 1:
            yield {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNetworkPolicy",
                "metadata": {"name": f"cnp{i}", "namespace": ns},
                "spec": {
                    "endpointSelector": {"matchLabels": {"app": target}},
                    "ingress": [
                        {
                            "fromEndpoints": [{"matchLabels": {"app": p}} for p in peers],
                            "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}],
                        }
                    ],
                },
            }
        else:
            yield {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": f"ap{i}", "namespace": ns},
                "spec": {
                    "selector": {"matchLabels": {"app": target}},
                    "rules": [
                        {
                            "from": [
                                {
                                    "source": {
                                        "principals": [f"cluster.local/ns/{ns}/sa/sa{p[1:]}" for p in peers]
                                    }
                                }
                            ],
                            "to": [{"operation": {"ports": [str(port)]}}],
                        }
                    ],
                },
            }


def _flows(world: World, count: int) -> list[tuple[FlowContext, Route]]:
    rng = random.Random(11)
    by_ns: dict[str, list[Workload]] = {}
    for w in world.workloads:
        by_ns.setdefault(w.namespace, []).append(w)
    namespaces = sorted(by_ns)
    out = []
    for _ in range(count):
        pods = by_ns[rng.choice(namespaces)]
        src, dst = rng.choice(pods), rng.choice(pods)
        ctx = FlowContext(world.endpoint(src), world.endpoint(dst), rng.choice([8080, 9090]))
        out.append((ctx, Route(src, dst)))
    return out


def _rate(
    call: Callable[[FlowContext, Route], bool], flows: list[tuple[FlowContext, Route]]
) -> tuple[float, int]:
    allowed = 0
    start = time.perf_counter()
    for ctx, route in flows:
        if call(ctx, route):
            allowed += 1
    return len(flows) / (time.perf_counter() - start), allowed


def run(size: int, flows_n: int) -> dict[str, float]:
    bodies = list(_documents(size))
    t0 = time.perf_counter()
    docs = parse_documents(_raw(b) for b in bodies)
    t1 = time.perf_counter()
    world = World.build(docs)
    t2 = time.perf_counter()
    engine = PolicyEngine(world, "ambient")
    t3 = time.perf_counter()
    flows = _flows(world, flows_n)

    def l4(ctx: FlowContext, route: Route) -> bool:
        # what a node proxy asks per new connection: source egress, then destination ingress
        return engine.connection(ctx, route).allowed

    def per_api(ctx: FlowContext, route: Route) -> bool:
        ok = True
        for d in (
            engine.kubernetes.evaluate(ctx, Direction.INGRESS),
            engine.cilium.evaluate_l4(ctx, Direction.INGRESS),
            engine.istio.evaluate(ctx, IstioView.NODE_PROXY),
        ):
            if d is not None and not d.allowed:
                ok = False
        return ok

    cold, allowed = _rate(l4, flows)
    warm, _ = _rate(l4, flows)
    apis, _ = _rate(per_api, flows)
    requests = [
        (FlowContext(c.src, c.dst, c.port, c.protocol, HttpRequest("GET", "/api/v1/x")), r) for c, r in flows
    ]
    l7, _ = _rate(lambda c, r: engine.trace(c, r).verdict.value == "ALLOW", requests)
    return {
        "policies": size,
        "validate_s": t1 - t0,
        "world_s": t2 - t1,
        "compile_s": t3 - t2,
        "l4_cold": cold,
        "l4_warm": warm,
        "per_api": apis,
        "l7_trace": l7,
        "allowed": allowed / len(flows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,1000,10000")
    parser.add_argument("--flows", type=int, default=20000)
    args = parser.parse_args()
    print(
        f"{'policies':>8} {'validate s':>10} {'compile s':>9} {'L4 cold/s':>10} {'L4 warm/s':>10} "
        f"{'per-API/s':>10} {'L7 trace/s':>10} {'allowed':>7}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        r = run(size, args.flows)
        print(
            f"{r['policies']:>8} {r['validate_s']:>10.2f} {r['compile_s']:>9.3f} {r['l4_cold']:>10,.0f} "
            f"{r['l4_warm']:>10,.0f} {r['per_api']:>10,.0f} {r['l7_trace']:>10,.0f} {r['allowed']:>7.0%}"
        )


if __name__ == "__main__":
    main()
