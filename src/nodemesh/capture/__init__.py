"""In-pod traffic capture: istio-cni's in-pod redirection, for the ambient node proxy.

`rules` renders the nftables ruleset and routes (pure), `install` applies and removes them
inside a pod's network namespace, and `sockets` makes the node proxy's sockets inside that
namespace (marked 0x539) and reads SO_ORIGINAL_DST. See docs/capture.md and istio-ambient.md §3.

Typical use by a node agent, for one ambient pod whose namespace file is `path`:

    install_capture(path)                       # rules + routes, idempotent
    pod = PodSocketFactory(path)                # holds the namespace open
    outbound = pod.tcp_bind(15001)              # serve with asyncio.start_server(sock=...)
    ...                                         # per accepted socket: original_dst(sock)
    pod.close(); remove_capture(path)           # when the pod goes away
"""

from __future__ import annotations

from nodemesh.capture.errors import (
    CaptureConfigError,
    CaptureError,
    InstallError,
    NetnsSwitchError,
    OriginalDestinationError,
)
from nodemesh.capture.install import (
    CaptureState,
    capture_state,
    install_capture,
    install_probe_snat,
    list_ruleset,
    remove_capture,
    remove_probe_snat,
    rule_counters,
)
from nodemesh.capture.rules import (
    INPOD_MARK,
    INPOD_TPROXY_MARK,
    PROBE_SNAT_V4,
    TABLE,
    CaptureConfig,
    CapturePlan,
    RuleName,
    plan_capture,
    render_probe_snat,
    render_ruleset,
)
from nodemesh.capture.sockets import (
    HostSocketFactory,
    PodSocketFactory,
    SocketAddress,
    SocketFactory,
    original_dst,
    parse_sockaddr,
)

__all__ = [
    "INPOD_MARK",
    "INPOD_TPROXY_MARK",
    "PROBE_SNAT_V4",
    "TABLE",
    "CaptureConfig",
    "CaptureConfigError",
    "CaptureError",
    "CapturePlan",
    "CaptureState",
    "HostSocketFactory",
    "InstallError",
    "NetnsSwitchError",
    "OriginalDestinationError",
    "PodSocketFactory",
    "RuleName",
    "SocketAddress",
    "SocketFactory",
    "capture_state",
    "install_capture",
    "install_probe_snat",
    "list_ruleset",
    "original_dst",
    "parse_sockaddr",
    "plan_capture",
    "remove_capture",
    "remove_probe_snat",
    "render_probe_snat",
    "render_ruleset",
    "rule_counters",
]
