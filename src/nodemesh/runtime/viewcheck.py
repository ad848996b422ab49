"""The local runtime's own check on a node agent's views: a view must be one this node can serve.

The control plane says which pods run on a node; the runtime built (at `up`) the namespaces,
veths and routes of the pods it planned, and starts no pod afterwards. A view that places on
this node a pod the runtime does not run there, or gives a pod another address than the one its
namespace has, cannot be realized: the agent rejects the whole push, which becomes a NACK with
the reason (xDS: "ACK/NACK takes place by returning the new API config version as applied or the
previous API config version respectively"), shown by `nodemesh status`, and the node keeps
serving its previous view. This is the data path's `ViewCheck` seam (`nodemesh.agent.view`),
the same one a data path that cannot compile a policy uses.

A pod that leaves the view (deleted from the control plane) is accepted: the node simply stops
knowing it, which it can always do.

Pure: the expected pods are an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodemesh.agent.view import LocalView

__all__ = ["RuntimePodsCheck"]


@dataclass(frozen=True, slots=True)
class RuntimePodsCheck:
    """Rejects a view with a workload on `node` that the runtime does not run there as given.

    `pods`: `ns/pod` -> address of the pods the runtime runs on the node (`placement.node_pods`).
    """

    node: str
    pods: Mapping[str, str]

    def __call__(self, candidate: LocalView) -> str | None:
        problems = []
        for res in candidate.of_type("workload"):
            value = res.value()
            if value.get("node") != self.node:
                problems.append(f"workload {res.name} is placed on {value.get('node')}, not on {self.node}")
                continue
            ip = self.pods.get(res.name)
            if ip is None:
                problems.append(
                    f"pod {res.name} is not running on {self.node}: the local runtime starts pods at "
                    "`nodemesh up` only (`nodemesh down` and `up` again to add it)"
                )
            elif str(value.get("ip")) != ip:
                problems.append(f"pod {res.name} has address {ip} on {self.node}, not {value.get('ip')}")
        return "; ".join(problems) or None
