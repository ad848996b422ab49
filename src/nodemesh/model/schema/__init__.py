"""Typed manifests. Importing this package registers every kind nodemesh understands."""

from nodemesh.model.schema import core
from nodemesh.model.schema.base import KINDS, Document

__all__ = ["KINDS", "Document", "core"]
