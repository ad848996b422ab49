"""Rendering verdicts for people (text) and for programs (the stable JSON schema).

The JSON schema of a trace (documented in docs/trace.md; fields are only ever added):

    {
      "verdict": "ALLOW" | "DENY",
      "mode": "ambient" | "kernel" | "none",
      "from": ENDPOINT, "to": ENDPOINT,
      "service": "ns/name" | null, "service_port": int | null,
      "port": int, "protocol": "TCP" | "UDP" | "SCTP",
      "request": {"method", "path", "host", "headers"} | null,
      "waypoint": "ns/name" | null,
      "decided_by": DECISION & {"point": "source" | "waypoint" | "l7-proxy" | "destination" | null},
      "points": [{"point", "where", "verdict", DECISION..., "apis": [DECISION...], "notes": [str]}],
    }
    ENDPOINT = {"namespace", "workload", "pod", "ip", "principal", "in_mesh"}
    DECISION = {"verdict", "api", "policy": {"kind", "namespace", "name"} | null, "rule",
                "reason", "drop_reason", "status", "notes"}
"""

from __future__ import annotations

from nodemesh.policy.decision import Decision, PointDecision
from nodemesh.policy.engine import Trace
from nodemesh.policy.findings import Finding
from nodemesh.policy.flow import Endpoint

__all__ = ["JsonObject", "finding_to_dict", "render_findings", "render_trace", "trace_to_dict"]

JsonObject = dict[str, object]


def _endpoint(e: Endpoint) -> JsonObject:
    return {
        "namespace": e.namespace,
        "workload": e.workload,
        "pod": e.pod,
        "ip": str(e.ip) if e.ip is not None else None,
        "principal": f"spiffe://{e.principal}" if e.principal else None,
        "in_mesh": e.principal is not None,
    }


def decision_to_dict(d: Decision) -> JsonObject:
    return {
        "verdict": d.verdict.value,
        "api": d.api.value if d.api else None,
        "policy": (
            {"kind": d.policy.kind, "namespace": d.policy.namespace, "name": d.policy.name}
            if d.policy
            else None
        ),
        "rule": d.rule,
        "reason": d.reason,
        "drop_reason": d.drop_reason.value if d.drop_reason else None,
        "status": d.status,
        "notes": list(d.notes),
    }


def _point(p: PointDecision) -> JsonObject:
    return {
        "point": p.point.value,
        "where": p.where,
        **decision_to_dict(p.decision),
        "apis": [decision_to_dict(d) for d in p.by_api],
        "notes": [*p.notes, *(n for d in p.by_api for n in d.notes)],
    }


def trace_to_dict(trace: Trace) -> JsonObject:
    ctx, route = trace.ctx, trace.route
    req = ctx.request
    return {
        "verdict": trace.verdict.value,
        "mode": trace.mode.value,
        "from": _endpoint(ctx.src),
        "to": _endpoint(ctx.dst),
        "service": f"{route.service.namespace}/{route.service.name}" if route.service else None,
        "service_port": route.service_port,
        "port": ctx.port,
        "protocol": ctx.protocol.value,
        "request": (
            {"method": req.method, "path": req.path, "host": req.host, "headers": dict(req.headers)}
            if req
            else None
        ),
        "waypoint": route.waypoint.key if route.waypoint else None,
        "decided_by": {
            "point": trace.decided_at.value if trace.decided_at else None,
            **decision_to_dict(trace.decision),
        },
        "points": [_point(p) for p in trace.points],
    }


def _color(text: str, allowed: bool, color: bool) -> str:
    if not color:
        return text
    return f"\033[{'32' if allowed else '31'}m{text}\033[0m"


def render_trace(trace: Trace, *, color: bool = False) -> str:
    ctx, route = trace.ctx, trace.route
    target = f"{ctx.dst}:{ctx.port}/{ctx.protocol.value}"
    if route.service is not None:
        target = (
            f"service {route.service.namespace}/{route.service.name}:{route.service_port} "
            f"-> {ctx.dst.pod}:{ctx.port}/{ctx.protocol.value}"
        )
    req = f"  {ctx.request.method} {ctx.request.path}" if ctx.request else ""
    lines = [f"{ctx.src} -> {target}{req}"]
    lines.append(
        f"mode {trace.mode.value}" + (f", via waypoint {route.waypoint.key}" if route.waypoint else "")
    )
    for p in trace.points:
        verdict = _color(f"{p.decision.verdict.value:5}", p.decision.allowed, color)
        lines.append(f"  {p.point.value:<12} {verdict}  {p.where}")
        for d in p.by_api:
            mark = _color(f"{d.verdict.value:5}", d.allowed, color)
            api = d.api.value if d.api else "-"
            lines.append(f"      {api:<10} {mark}  {d.reason}")
            lines.extend(f"                        note: {n}" for n in d.notes)
        if not p.by_api:
            lines.append(f"      {'-':<10} {'ALLOW':5}  {p.decision.reason}")
        lines.extend(f"      note: {n}" for n in p.notes)
    for n in trace.decision.notes if not trace.points else ():
        lines.append(f"  note: {n}")
    verdict = _color(trace.verdict.value, trace.verdict.value == "ALLOW", color)
    where = f" at {trace.decided_at.value}" if trace.decided_at else ""
    lines.append(f"verdict: {verdict}{where}: {trace.decision.reason}")
    return "\n".join(lines)


def finding_to_dict(f: Finding) -> JsonObject:
    return {
        "code": f.code,
        "severity": f.severity.value,
        "resource": f.resource,
        "message": f.message,
        "file": f.file or None,
        "line": f.line or None,
    }


def render_findings(findings: list[Finding]) -> str:
    if not findings:
        return "No validation issues found."
    return "\n".join(str(f) for f in findings)
