"""Worker-side pause: stop taking result tasks while a dependency is down.

Pure lease bookkeeping (leases.py) is apart from the Celery edges (control.py,
board.py, worker.py) and the NATS consumer pause (nats_consumers.py).
"""
