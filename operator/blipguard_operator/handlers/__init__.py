"""kopf handlers, one module per concern; ``main.py`` only wires them to decorators."""
