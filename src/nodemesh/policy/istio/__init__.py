"""Istio security policy: AuthorizationPolicy, PeerAuthentication, RequestAuthentication.

Every AuthorizationPolicy compiles once into the shared IR (`ir.py`), in full, and each
evaluator sees a projection of it: who evaluates decides what a policy means (reference §4.2,
§4.6). The package follows that pipeline, one concept per module:

- `conditions`   what each field tests (`Attribute`, `IstioCondition`, `make_condition`);
- `compile`      a manifest -> the IR, and its attachment (`compile_authorization_policy`);
- `matching`     ztunnel's `Authorization::matches` on the IR and as precompiled predicates;
- `projection`   the views (`IstioView`) and what each enforces (`project_node_proxy`,
                 `project_tcp`, istiod `handleRule` and Envoy's TCP filter chain);
- `authn`        RequestAuthentication (JWT validation before RBAC, reference §4.8);
- `peer`         PeerAuthentication (the effective mTLS mode, reference §4.7);
- `engine`       `IstioEngine`: attachment, evaluation order (reference §4.1), caches;
- `subsumption`, `analyze`  findings NM201-NM208.

Only the names below are the package's API; the modules' other names serve their siblings.
"""

from nodemesh.policy.istio.compile import (
    WAYPOINT_CLASS,
    ConditionCache,
    compile_authorization_policy,
    policy_ref,
)
from nodemesh.policy.istio.conditions import Attribute, IstioCondition, make_condition
from nodemesh.policy.istio.engine import IstioEngine
from nodemesh.policy.istio.matching import Check, Compiled, compile_rules, first_match, match_compiled
from nodemesh.policy.istio.peer import STATIC_STRICT
from nodemesh.policy.istio.projection import IstioView, project_node_proxy, project_tcp

__all__ = [
    "STATIC_STRICT",
    "WAYPOINT_CLASS",
    "Attribute",
    "Check",
    "Compiled",
    "ConditionCache",
    "IstioCondition",
    "IstioEngine",
    "IstioView",
    "compile_authorization_policy",
    "compile_rules",
    "first_match",
    "make_condition",
    "match_compiled",
    "policy_ref",
    "project_node_proxy",
    "project_tcp",
]
