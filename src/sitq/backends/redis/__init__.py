"""The Redis backend (see ``backend`` for its design): ``RedisBackend``, on redis-py's asyncio
client, with its Lua scripts in ``scripts/``."""

from sitq.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
