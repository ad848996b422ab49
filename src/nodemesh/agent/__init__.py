"""The node agent. This package holds its control-plane side: the view stream with ACK/NACK,
the last good view and the workload certificates kept on disk (static stability), reconnects
with backoff and jitter, and certificate renewal. The data paths (ambient node proxy, kernel
programs) build on `NodeAgent.view` and `NodeAgent.certificates`.
"""

from nodemesh.agent.backoff import Backoff
from nodemesh.agent.client import NodeAgent, ViewListener
from nodemesh.agent.disk import AgentDisk, WorkloadCertificate
from nodemesh.agent.view import LocalView, ViewCheck, ViewRejectedError

__all__ = [
    "AgentDisk",
    "Backoff",
    "LocalView",
    "NodeAgent",
    "ViewCheck",
    "ViewListener",
    "ViewRejectedError",
    "WorkloadCertificate",
]
