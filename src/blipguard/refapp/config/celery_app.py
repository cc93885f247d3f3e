"""The Celery app ``ami``: settings under the ``CELERY`` namespace, tasks autodiscovered."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("ami")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
