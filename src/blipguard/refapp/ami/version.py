"""Which platform commit this process runs: ``settings.ANTENNA_VERSION``.

``"pre"`` is 32af89e9 (before the Redis-blip fix), ``"head"`` is 731cc2a2. Not a
platform module: the reference app rebuilds both commits in one tree, and the code
branches on these flags only where the fact sheet's PRE-vs-HEAD table says they differ.
Each process runs one version (read once, at import).
"""

from django.conf import settings

VERSION: str = getattr(settings, "ANTENNA_VERSION", "head")
if VERSION not in ("pre", "head"):
    raise ValueError(f"ANTENNA_VERSION must be 'pre' or 'head', not {VERSION!r}")

PRE = VERSION == "pre"
HEAD = VERSION == "head"
