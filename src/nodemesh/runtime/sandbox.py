"""Executing the network plan inside the sandbox: namespaces, links, routes, sysctls, nftables.

Runs in the supervisor (the sandbox's init) before its event loop starts, single-threaded, so
children may join a namespace between fork and exec. Every step is a rendered text (`ip -batch`
lines from `topology.render_network`, an nftables ruleset from `services.render_ruleset`) applied
by the standard tools inside the target namespace; a failing step raises `BuildError` with the
tool's own message, and the supervisor exits, taking everything built so far with it: there is
no partial cluster to roll back because there is no cluster outside the sandbox.

Why the standard tools rather than netlink from Python: the steps stay readable in the plan and
in test assertions, and `ip`/`nft` are what a person debugging the cluster would type.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from nodemesh.runtime import netns
from nodemesh.runtime.errors import BuildError
from nodemesh.runtime.services import render_ruleset
from nodemesh.runtime.state import ClusterDir
from nodemesh.runtime.topology import (
    ClusterPlan,
    NetworkStep,
    render_hosts,
    render_network,
    render_resolv_conf,
)

__all__ = ["BuildError", "build_network", "run_in_netns", "write_pod_files"]


def _enter(path: str | None, sysctls: tuple[tuple[str, str], ...]) -> Callable[[], None]:
    def pre() -> None:
        if path is not None:
            fd = os.open(path, os.O_RDONLY)
            netns.setns(fd, netns.CLONE_NEWNET)
            os.close(fd)
        for key, value in sysctls:
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)

    return pre


def run_in_netns(
    path: str | None, argv: list[str], stdin: str = "", sysctls: tuple[tuple[str, str], ...] = ()
) -> str:
    """Run a tool in a network namespace (None: the caller's), return stdout, raise on failure."""
    proc = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        preexec_fn=_enter(path, sysctls),  # single-threaded here by design
        check=False,
    )
    if proc.returncode != 0:
        where = Path(path).name if path else "sandbox"
        raise BuildError(f"{' '.join(argv[:2])} in {where} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _apply(step: NetworkStep, netns_dir: Path) -> None:
    path = str(netns_dir / step.netns) if step.netns else None
    run_in_netns(path, ["ip", "-batch", "-"], "\n".join(step.batch) + "\n", step.sysctls)


def build_network(plan: ClusterPlan, state: ClusterDir, report: Callable[[str], None]) -> None:
    """Create every namespace file, then apply the link/route steps, then load each node's rules."""
    names = [n.name for n in plan.nodes] + [p.netns for p in plan.pods if not p.host_network]
    for name in names:
        netns.create_netns(str(state.netns / name))
    for step in render_network(plan, str(state.netns)):
        _apply(step, state.netns)
    report(f"links and routes for {len(plan.nodes)} nodes and {len(plan.pods)} pods")
    ruleset = render_ruleset(plan)
    for node in plan.nodes:
        run_in_netns(str(state.netns / node.name), ["nft", "-f", "-"], ruleset)
    report(f"service rules on {len(plan.nodes)} nodes ({len(plan.services)} services)")


def write_pod_files(plan: ClusterPlan, state: ClusterDir) -> dict[str, dict[str, str]]:
    """Each pod's resolv.conf and hosts; returns pod key -> {source file: target path}."""
    out: dict[str, dict[str, str]] = {}
    for pod in plan.pods:
        d = (
            state.pod_files / pod.netns
            if not pod.host_network
            else state.pod_files / f"{pod.namespace}.{pod.name}"
        )
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(render_resolv_conf(plan, pod.namespace))
        (d / "hosts").write_text(render_hosts(pod))
        out[pod.key] = {str(d / "resolv.conf"): "/etc/resolv.conf", str(d / "hosts"): "/etc/hosts"}
    return out
