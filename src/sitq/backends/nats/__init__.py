"""The NATS JetStream backend (see ``backend`` for its design and the module of each layer):
``NATSBackend``, on nats-py."""

from sitq.backends.nats.backend import NATSBackend

__all__ = ["NATSBackend"]
