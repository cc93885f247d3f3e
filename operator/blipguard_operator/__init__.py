"""blipguard's Kubernetes operator.

``blip`` is its pure decision core: pod observations and ticks in, pause/resume actions
out, no Kubernetes client and no clock, so every decision is unit-tested exactly. The
kopf handlers that feed it and carry out its actions live beside it.
"""
