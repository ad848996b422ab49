"""nodemesh: a sidecarless service mesh.

Two data paths (a kernel L4 path shaped like Cilium's, a per-node HBONE proxy with on-demand
L7 waypoints shaped like Istio Ambient's) behind one control plane, one policy engine and one
flow observability pipeline. See docs/architecture.md.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
