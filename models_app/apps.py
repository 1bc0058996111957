from django.apps import AppConfig


class ModelsAppConfig(AppConfig):
    name = "models_app"
    verbose_name = "Models"

    def ready(self) -> None:
        from workers.kinds import register

        from .kind import ModelEvaluation, ModelExport, ModelTraining

        register(ModelTraining())
        register(ModelEvaluation())
        register(ModelExport())
