"""The control plane's wire definitions: `controlplane.proto` (resources, per-node view push)
and `ca.proto` (Istio's `IstioCertificateService`).

Generated code lives only in `nodemesh.protos.gen` (regenerate with `make protos`); the rest of
nodemesh imports the message and stub modules from there and converts to its own typed values
at the edge (`nodemesh.controlplane.server`, `nodemesh.agent.client`).
"""

__all__: list[str] = []
