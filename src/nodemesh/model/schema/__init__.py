"""Typed manifests. Importing this package registers every kind nodemesh understands."""

from nodemesh.model.schema import cilium as cilium
from nodemesh.model.schema import core
from nodemesh.model.schema import gateway as gateway
from nodemesh.model.schema import istio as istio
from nodemesh.model.schema import networking as networking
from nodemesh.model.schema.base import KINDS, Document

__all__ = ["KINDS", "Document", "core"]
