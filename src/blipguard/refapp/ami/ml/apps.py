from django.apps import AppConfig


class MLConfig(AppConfig):
    name = "ami.ml"
    label = "ml"
