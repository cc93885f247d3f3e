"""API routes: a DRF DefaultRouter under ``api/v2/`` with ``jobs`` registered."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from ami.jobs.views import JobViewSet

router = DefaultRouter()
router.register(r"jobs", JobViewSet, basename="job")

urlpatterns = [
    path("api/v2/", include(router.urls)),
]
