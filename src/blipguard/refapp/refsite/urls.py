from django.urls import path

from ami.jobs import views

urlpatterns = [
    path("api/v2/jobs/<int:job_id>/", views.job_detail),
    path("api/v2/jobs/<int:job_id>/tasks/", views.reserve_tasks),
    path("api/v2/jobs/<int:job_id>/result/", views.submit_results),
]
