"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2): compile to the IR, evaluate.

Upstream semantics: docs.cilium.io "Policy Language", "Deny Policies";
`pkg/k8s/apis/cilium.io/utils/utils.go`, `pkg/policy/{repository,rule,l4}.go`,
`pkg/envoy/xds_server.go`; summarised in /work/shared/reference/cilium.md section 1. One concept
per module:

- `selectors`   identity labels and endpoint selectors (`label_view`, `CiliumSelector`);
- `conditions`  the peer and L7 conditions only Cilium has (entities, ICMP, http rules);
- `compile`     a policy document -> IR rules, with Cilium's selector widening;
- `engine`      `CiliumEngine`: which rules select an endpoint, the verdict per direction, caches;
- `analyze`     findings NM301-NM307.

Only the names below are the package's API; the modules' other names serve their siblings.
"""

from nodemesh.policy.cilium.compile import ANY_L4, DNS_NOTE, PeerRule
from nodemesh.policy.cilium.conditions import (
    EntityCondition,
    HttpAnyRequest,
    HttpHeaderCondition,
    HttpRegexCondition,
    IcmpCondition,
    IdentityCondition,
    UnresolvedPeer,
)
from nodemesh.policy.cilium.engine import CiliumEngine, EndpointKey
from nodemesh.policy.cilium.selectors import (
    CLUSTER_KEY,
    NS_KEY,
    NS_LABELS_PREFIX,
    CiliumSelector,
    CiliumSubject,
    LabelRequirement,
    Labels,
    label_view,
)

__all__ = [
    "ANY_L4",
    "CLUSTER_KEY",
    "DNS_NOTE",
    "NS_KEY",
    "NS_LABELS_PREFIX",
    "CiliumEngine",
    "CiliumSelector",
    "CiliumSubject",
    "EndpointKey",
    "EntityCondition",
    "HttpAnyRequest",
    "HttpHeaderCondition",
    "HttpRegexCondition",
    "IcmpCondition",
    "IdentityCondition",
    "LabelRequirement",
    "Labels",
    "PeerRule",
    "UnresolvedPeer",
    "label_view",
]
