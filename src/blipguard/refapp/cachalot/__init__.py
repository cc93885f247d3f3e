"""A minimal stand-in for django-cachalot's public ``cachalot.api`` (not the real package).

The platform pins django-cachalot 2.6.3 and decorates the HEAD result task with
``@cachalot_disabled()``. The real package needs to join INSTALLED_APPS and does not
support every release set this project tests, so this stand-in gives only the
decorator's shape (a context manager/decorator that turns the ORM cache off in the
current thread). The reference app has no ORM cache, so it changes nothing else.
"""
