"""Worker-side pause: stop taking result tasks while a dependency is down.

Pure policy (leases.py: lease bookkeeping; breaker.py: the in-worker breaker's state
machine) is apart from the edges: the board shared with the prefork children (board.py),
the control commands, lease timers and probe thread (worker.py), the probes (probes.py),
the fleet client (client.py) and the NATS consumer pause (nats_consumers.py).
"""
