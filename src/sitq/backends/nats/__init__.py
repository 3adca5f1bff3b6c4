"""The NATS JetStream backend (see ``backend`` for its design): ``NATSBackend``, on nats-py,
with its record format in ``_records``, the concurrency-key slots in ``_slots`` and the
JetStream API's replies and consumers in ``_jetstream``."""

from sitq.backends.nats.backend import NATSBackend

__all__ = ["NATSBackend"]
