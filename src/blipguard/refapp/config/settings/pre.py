"""The platform at PRE (32af89e9, before the Redis-blip fix).

No queue routing (every task on ``antenna``); no ``NATS_TASK_TTR`` setting, so the
code's fallback of 30 s applies; logs in the ``Job.logs`` JSON field.
"""

from .base import *  # noqa: F401,F403

ANTENNA_VERSION = "pre"
