"""A local cluster's node agent process: one per node, in that node's network namespace.

`python -m nodemesh.runtime.nodeagent [--wait-for-go] CLUSTER_DIR NODE --address ADDR` is
started by the cluster's supervisor (`mesh.MeshProcesses`) while the cluster is being built,
and, with `--wait-for-go`, waits (imported, so without delay) for a line on stdin that the
supervisor sends once the control plane serves. It runs
`nodemesh.agent.NodeAgent` (ztunnel's role on a node: it runs in the node's network namespace,
as ztunnel runs in the host network namespace of its node) with:

- the node credential the control plane issued at `up` (`controlplane/nodes/<node>/`);
- its state directory `agents/<node>/` under the cluster's: the last view it ACKed and its
  certificates, loaded before any connection, so a restarted agent, or one whose control plane
  is down, serves its last good view (static stability);
- the runtime's check (`viewcheck.RuntimePodsCheck`): a view placing on this node a pod the
  runtime does not run there is NACKed, with the reason;
- the control plane's node endpoint on the underlay gateway, reached over the node's `eth0`.

It reports to the supervisor on stdout, one JSON line per change of what `nodemesh status`
shows (connected, ACKed version, current NACK, resources, certificates); logs go to stderr.
SIGTERM stops it.

In mode ambient it is also where its node proxy's policies come from (ztunnel receives its
`Authorization` resources over xDS; our node proxy has no control-plane client, so the agent
hands them over): before it reports a newly ACKed version, it writes the policy documents of that
view to `agents/<node>/policies.json` (`policy_snapshot`, pure; written atomically). The
supervisor, seeing the new version in the report, sends SIGHUP to the node's proxy, which
re-reads the file and closes the live connections the new policies deny. Only an ACKed view is
written: a NACKed push never reaches the data path.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from nodemesh.agent import LocalView, NodeAgent
from nodemesh.controlplane.credentials import NodeCredential
from nodemesh.runtime.state import ClusterDir
from nodemesh.runtime.viewcheck import RuntimePodsCheck

__all__ = ["main", "policy_snapshot", "snapshot", "write_policies"]


def snapshot(agent: NodeAgent) -> dict[str, object]:
    """What the supervisor records about this agent (`state.AgentStatus` fields)."""
    acked = agent.last_acked_version or agent.view.version_info
    nack_version, nack_reason = agent.last_nack or ("", "")
    if not nack_version or _revision(nack_version) <= _revision(acked):
        nack_version, nack_reason = "", ""  # a later push was ACKed: the NACK is history
    return {
        "event": "agent",
        "node": agent.node,
        "connected": agent.connected,
        "acked_version": acked,
        "resources": len(agent.view.resources),
        "certificates": len(agent.certificates),
        "nack_version": nack_version,
        "nack_reason": nack_reason,
    }


def policy_snapshot(view: LocalView) -> dict[str, object]:
    """The node proxy's policies: the stored documents of the view's `policy` resources, under
    the view's version (what the node proxy reports back once it enforces them)."""
    return {"version": view.version_info, "documents": [r.value() for r in view.of_type("policy")]}


def write_policies(path: Path, view: LocalView) -> None:
    """Write `policy_snapshot(view)` atomically (the node proxy may read it at any time)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(policy_snapshot(view), indent=1))
    os.replace(tmp, path)


def _differs(agent: NodeAgent, seen: dict[str, object]) -> bool:
    return snapshot(agent) != seen


def _revision(version: str) -> int:
    return int(version) if version.isdigit() else 0


async def run(state: ClusterDir, node: str, address: str) -> int:
    directory = state.agent_dir(node)
    pods = json.loads(state.agent_pods(node).read_text())
    credential = NodeCredential.load(state.controlplane / "nodes" / node, node)
    agent = NodeAgent(node, address, credential, directory, checks=[RuntimePodsCheck(node, pods)])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent.start()
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    last: dict[str, object] = {}
    written = ""
    try:
        while not stop.is_set():
            now = snapshot(agent)
            if agent.view.version_info and agent.view.version_info != written:
                write_policies(state.agent_policies(node), agent.view)  # before it is reported
                written = agent.view.version_info
            if now != last:
                sys.stdout.write(json.dumps(now) + "\n")
                sys.stdout.flush()
                last = now
            changed = asyncio.create_task(
                agent.wait_for(functools.partial(_differs, agent, last), timeout=None), name="agent-change"
            )
            await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
    finally:
        stopping.cancel()
        await agent.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodemesh-node-agent")
    parser.add_argument("cluster_dir")
    parser.add_argument("node")
    parser.add_argument("--address", required=True, help="the control plane's node endpoint")
    parser.add_argument(
        "--wait-for-go", action="store_true", help="wait for a line on stdin (the control plane serves)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.wait_for_go and not sys.stdin.readline():
        return 1  # the supervisor went away before the control plane served
    return asyncio.run(run(ClusterDir(Path(args.cluster_dir)), args.node, args.address))


if __name__ == "__main__":
    sys.exit(main())
