from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "ami.jobs"
    label = "jobs"
