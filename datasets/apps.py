from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "datasets"
    verbose_name = "Datasets"

    def ready(self) -> None:
        from workers.kinds import register

        from .kind import DatasetBuild

        register(DatasetBuild())
