"""Applying and removing the in-pod capture inside a pod's network namespace (the I/O shell).

istio-cni's node agent enters the pod's namespace and installs the rules and routes there
(istio-ambient.md §3.1 step 2, `IS:cni/pkg/nftables/nftables.go` `CreateInpodRules`: the
ruleset, then `addLoopbackRoute`, then `addInpodMarkIPRule`); this module does the same with
the plan `rules.plan_capture` rendered, by running `nft -f -` and `ip` inside the namespace.

Invariants:
- Idempotent both ways: `install_capture` on a pod that has the capture changes nothing that a
  connection could notice (the ruleset is replaced in one transaction, the route with `replace`,
  the `ip rule` added only when missing); `remove_capture` on a pod without it succeeds.
- Only the namespace at the given path is touched. The tools run in a child process started
  from a short-lived thread that has joined the namespace (`runtime.netns.in_netns`), so the
  caller's threads (an event loop) never change namespace, and the host's ruleset and routes
  are never read or written.
- Routes go in before the ruleset and come out after it: whenever packets are being
  redirected, the route that returns replies to the node proxy's transparent sockets exists.

Why `nft`/`ip` rather than netlink from Python (pyroute2): the plan stays the text a person
would type, the runtime applies its own rules the same way (`runtime/sandbox.py`), and nothing
is added to the dependencies.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nodemesh.capture.errors import InstallError
from nodemesh.capture.rules import (
    PROBE_TABLE,
    TABLE,
    CaptureConfig,
    CapturePlan,
    LocalRoute,
    PolicyRule,
    plan_capture,
    render_probe_snat,
)
from nodemesh.runtime.netns import in_netns

__all__ = [
    "CaptureState",
    "capture_state",
    "install_capture",
    "install_probe_snat",
    "list_ruleset",
    "remove_capture",
    "remove_probe_snat",
    "rule_counters",
    "run_in_netns",
]


def run_in_netns(netns: str, argv: Sequence[str], stdin: str = "", *, check: bool = True) -> str:
    """Run a tool inside the network namespace at `netns` and return its stdout.

    The child inherits the namespace of the thread that starts it, and that thread is a
    throwaway one (`in_netns`), so no other thread of this process ever changes namespace."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)

    proc = in_netns(netns, run)
    if check and proc.returncode != 0:
        raise InstallError(netns, tuple(argv), proc.stderr.strip() or f"exit status {proc.returncode}")
    return proc.stdout


def _json(netns: str, argv: Sequence[str]) -> list[dict[str, object]]:
    out = run_in_netns(netns, argv, check=False)
    try:
        data = json.loads(out) if out.strip() else []
    except json.JSONDecodeError:
        return []
    return data if isinstance(data, list) else []


def _rule_present(netns: str, rule: PolicyRule) -> bool:
    for entry in _json(netns, ("ip", "-j", f"-{rule.family}", "rule", "show")):
        if (
            entry.get("priority") == rule.priority
            and entry.get("fwmark") == f"{rule.fwmark:#x}"
            and entry.get("fwmask") == f"{rule.mask:#x}"
            and entry.get("table") == str(rule.table)
        ):
            return True
    return False


def _route_present(netns: str, route: LocalRoute) -> bool:
    argv = ("ip", "-j", f"-{route.family}", "route", "show", "table", str(route.table))
    return any(
        e.get("type") == "local" and e.get("dst") == "default" and e.get("dev") == "lo"
        for e in _json(netns, argv)
    )


def _table_present(netns: str, table: str) -> bool:
    return run_in_netns(netns, ("nft", "list", "table", "inet", table), check=False) != ""


@dataclass(frozen=True, slots=True)
class CaptureState:
    """What of the capture a pod namespace holds right now."""

    table: bool
    policy_rules: bool
    local_routes: bool

    @property
    def installed(self) -> bool:
        return self.table and self.policy_rules and self.local_routes

    @property
    def absent(self) -> bool:
        return not (self.table or self.policy_rules or self.local_routes)


def capture_state(netns: str, config: CaptureConfig | None = None) -> CaptureState:
    plan = plan_capture(config or CaptureConfig())
    return CaptureState(
        table=_table_present(netns, TABLE),
        policy_rules=all(_rule_present(netns, r) for r in plan.policy_rules),
        local_routes=all(_route_present(netns, r) for r in plan.local_routes),
    )


def install_capture(netns: str, config: CaptureConfig | None = None) -> CapturePlan:
    """Install (or refresh) the capture in the pod namespace at `netns`; returns what was applied."""
    plan = plan_capture(config or CaptureConfig())
    for route in plan.local_routes:
        run_in_netns(netns, route.add_argv())
    for rule in plan.policy_rules:
        if not _rule_present(netns, rule):
            run_in_netns(netns, rule.add_argv())
    run_in_netns(netns, ("nft", "-f", "-"), plan.ruleset)
    return plan


def remove_capture(netns: str, config: CaptureConfig | None = None) -> None:
    """Remove the table, the `ip rule` and the local route; a no-op where they are absent."""
    plan = plan_capture(config or CaptureConfig())
    run_in_netns(netns, ("nft", "-f", "-"), plan.removal)
    for rule in plan.policy_rules:
        while _rule_present(netns, rule):  # a rule added twice by hand is removed twice
            run_in_netns(netns, rule.delete_argv())
    for route in plan.local_routes:
        if _route_present(netns, route):
            run_in_netns(netns, route.delete_argv())


def list_ruleset(netns: str) -> str:
    """`nft list ruleset` inside the namespace."""
    return run_in_netns(netns, ("nft", "list", "ruleset"))


def rule_counters(netns: str, table: str = TABLE) -> Mapping[str, int]:
    """Packets counted per rule, keyed by the rule's comment (`RuleName` values for the
    capture table): which rule a connection went through, read from the kernel."""
    out: dict[str, int] = {}
    for item in _json_objects(netns, table):
        rule = item.get("rule")
        if not isinstance(rule, dict):
            continue
        comment = rule.get("comment")
        exprs = rule.get("expr")
        if not isinstance(comment, str) or not isinstance(exprs, list):
            continue
        for expr in exprs:
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict) and isinstance(counter.get("packets"), int):
                out[comment] = counter["packets"]
    return out


def _json_objects(netns: str, table: str) -> list[dict[str, object]]:
    out = run_in_netns(netns, ("nft", "-j", "list", "table", "inet", table), check=False)
    if not out.strip():
        return []
    doc = json.loads(out)
    items = doc.get("nftables", []) if isinstance(doc, dict) else []
    return [i for i in items if isinstance(i, dict)]


def install_probe_snat(
    node_netns: str,
    pod_ips: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
    *,
    prober_uid: int = 0,
    config: CaptureConfig | None = None,
) -> None:
    """In the NODE's namespace: SNAT the prober's TCP to these pods to 169.254.7.127 (§3.4).
    Call again with the full set of ambient pods of the node whenever it changes."""
    ruleset = render_probe_snat(pod_ips, prober_uid=prober_uid, config=config)
    run_in_netns(node_netns, ("nft", "-f", "-"), ruleset)


def remove_probe_snat(node_netns: str) -> None:
    run_in_netns(
        node_netns, ("nft", "-f", "-"), f"add table inet {PROBE_TABLE}\ndelete table inet {PROBE_TABLE}\n"
    )
