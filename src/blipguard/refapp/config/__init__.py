"""The platform's Django project package: exports the Celery app as ``celery_app``."""

from .celery_app import app as celery_app

__all__ = ("celery_app",)
