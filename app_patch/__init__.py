"""blipguard's fix for the async-job result path of a Django/Celery app.

Add ``"blipguard.app_patch"`` to ``INSTALLED_APPS`` to patch an Antenna-shaped host at
start-up; or use the library API below from any Django/Celery app.
"""

from .classify import Classification, Kind, classify
from .errors import (
    BlipguardError,
    ConfigurationError,
    JobStateMissing,
    TransientDependencyError,
)
from .retry_policy import RetryPolicy, fit_to_ack_wait

__all__ = [
    "BlipguardError",
    "Classification",
    "ConfigurationError",
    "JobStateMissing",
    "Kind",
    "RetryPolicy",
    "TransientDependencyError",
    "classify",
    "fit_to_ack_wait",
]
