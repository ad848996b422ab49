"""Applications nodemesh ships so a fresh machine can run a cluster without images."""

__all__: list[str] = []
