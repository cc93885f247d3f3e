from django.apps import AppConfig


class MainConfig(AppConfig):
    name = "ami.main"
    label = "main"
