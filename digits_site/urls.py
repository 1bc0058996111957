from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path, register_converter
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token

from datasets import api as datasets_api
from datasets import views as datasets_views
from frontend import sso
from frontend import views as frontend_views
from models_app import api as models_api
from models_app import evaluation_api, evaluation_views, export_api, export_views, plugin_api, sweep_api, sweep_views
from models_app import views as models_views
from workers import api as workers_api
from workers import views as workers_views



class IdConverter:
    """A database id: at most 18 digits, so every match fits a 64-bit integer column (a
    larger number is a 404, not an overflow in the database driver)."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "id")

api_patterns = [
    path("token/", obtain_auth_token, name="api_token"),
    path("jobs/", workers_api.JobListApi.as_view(), name="api_jobs"),
    path("datasets/", datasets_api.DatasetListApi.as_view(), name="api_datasets"),
    path("datasets/<id:pk>/", datasets_api.DatasetDetailApi.as_view(), name="api_dataset"),
    path("datasets/<id:pk>/abort/", datasets_api.DatasetAbortApi.as_view(), name="api_dataset_abort"),
    path("datasets/<id:pk>/clone/", datasets_api.DatasetCloneApi.as_view(), name="api_dataset_clone"),
    path("datasets/<id:pk>/images/", datasets_api.DatasetImagesApi.as_view(), name="api_dataset_images"),
    path(
        "datasets/<id:pk>/images/<str:split>/<int:index>/",
        datasets_api.DatasetImageApi.as_view(),
        name="api_dataset_image",
    ),
    path("uploads/", datasets_api.UploadListApi.as_view(), name="api_uploads"),
    path("s3/credentials/", datasets_api.S3CredentialListApi.as_view(), name="api_s3_credentials"),
    path("plugins/", plugin_api.PluginsApi.as_view(), name="api_plugins"),
    path("s3/credentials/<id:pk>/", datasets_api.S3CredentialDetailApi.as_view(), name="api_s3_credential"),
    path("uploads/<str:pk>/", datasets_api.UploadDetailApi.as_view(), name="api_upload"),
    path("models/", models_api.ModelListApi.as_view(), name="api_models"),
    path("models/import/", models_api.ModelImportApi.as_view(), name="api_model_import"),
    path("models/compare/", models_api.ModelCompareApi.as_view(), name="api_model_compare"),
    path("models/<id:pk>/", models_api.ModelDetailApi.as_view(), name="api_model"),
    path("models/<id:pk>/abort/", models_api.ModelAbortApi.as_view(), name="api_model_abort"),
    path("models/<id:pk>/resume/", models_api.ModelResumeApi.as_view(), name="api_model_resume"),
    path("models/<id:pk>/clone/", models_api.ModelCloneApi.as_view(), name="api_model_clone"),
    path("models/<id:pk>/metrics/", models_api.ModelMetricsApi.as_view(), name="api_model_metrics"),
    path("models/<id:pk>/metrics/points/", models_api.ModelMetricPointsApi.as_view(), name="api_model_metric_points"),
    path("models/<id:pk>/metrics/csv/", models_api.ModelMetricsCsvApi.as_view(), name="api_model_metrics_csv"),
    path("models/<id:pk>/classify/", models_api.ModelClassifyApi.as_view(), name="api_model_classify"),
    path("models/<id:pk>/download/", export_api.ModelArchiveApi.as_view(), name="api_model_download"),
    path("models/<id:pk>/download/<str:fmt>/", export_api.ModelDownloadApi.as_view(), name="api_model_download_format"),
    path("models/<id:pk>/exports/", export_api.ModelExportsApi.as_view(), name="api_model_exports"),
    path("exports/<id:pk>/", export_api.ExportDetailApi.as_view(), name="api_export"),
    path("models/<id:pk>/evaluations/", evaluation_api.ModelEvaluationsApi.as_view(), name="api_model_evaluations"),
    path("evaluations/compare/", evaluation_api.EvaluationCompareApi.as_view(), name="api_evaluation_compare"),
    path("evaluations/<id:pk>/", evaluation_api.EvaluationDetailApi.as_view(), name="api_evaluation"),
    path("evaluations/<id:pk>/images/", evaluation_api.EvaluationImagesApi.as_view(), name="api_evaluation_images"),
    path("evaluations/<id:pk>/csv/", evaluation_api.EvaluationCsvApi.as_view(), name="api_evaluation_csv"),
    path("evaluations/<id:pk>/images/<int:index>/", evaluation_api.EvaluationImageApi.as_view(), name="api_evaluation_image"),
    path("sweeps/", sweep_api.SweepListApi.as_view(), name="api_sweeps"),
    path("sweeps/<id:pk>/", sweep_api.SweepDetailApi.as_view(), name="api_sweep"),
    path("sweeps/<id:pk>/abort/", sweep_api.SweepAbortApi.as_view(), name="api_sweep_abort"),
    path("networks/", models_api.NetworkListApi.as_view(), name="api_networks"),
    path("networks/visualize/", models_api.VisualizeApi.as_view(), name="api_network_visualize"),
    path("networks/<str:name>/", models_api.NetworkDetailApi.as_view(), name="api_network"),
    path("lr-preview/", models_api.LrPreviewApi.as_view(), name="api_lr_preview"),
    path("jobs/bulk/", workers_api.JobBulkApi.as_view(), name="api_jobs_bulk"),
    path("jobs/<id:pk>/", workers_api.JobDetailApi.as_view(), name="api_job"),
    path("jobs/<id:pk>/log/", workers_api.JobLogApi.as_view(), name="api_job_log"),
    path("devices/", workers_api.DeviceListApi.as_view(), name="api_devices"),
    path("devices/<id:pk>/", workers_api.DeviceDetailApi.as_view(), name="api_device"),
    path("queue/", workers_api.QueueApi.as_view(), name="api_queue"),
    path("queue/<id:pk>/", workers_api.QueueJobApi.as_view(), name="api_queue_job"),
    path("usage/", workers_api.UsageApi.as_view(), name="api_usage"),
    path("users/<id:user_id>/device-limit/", workers_api.UserLimitApi.as_view(), name="api_user_limit"),
    path("teams/<id:team_id>/limit/", workers_api.TeamLimitApi.as_view(), name="api_team_limit"),
    path("audit/", workers_api.AuditListApi.as_view(), name="api_audit"),
    path("schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api_schema"), name="api_docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api_schema"), name="api_redoc"),
]

urlpatterns = [
    # Browsers ask for /favicon.ico whatever the page says: the icon, also before login.
    path("favicon.ico", login_not_required(RedirectView.as_view(url=static("img/favicon.svg"), permanent=True))),
    path("", frontend_views.home, name="home"),
    path("accounts/login/", sso.LoginView.as_view(), name="login"),
    # Single sign-on (OpenID Connect): 404 unless configured.
    path("oidc/authenticate/", sso.sso_start, name="sso_start"),
    path("oidc/callback/", sso.sso_callback, name="sso_callback"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("profile/", frontend_views.profile, name="profile"),
    path("profile/token/", frontend_views.profile_token, name="profile_token"),
    path("datasets/", datasets_views.dataset_list_view, name="dataset_list"),
    path("datasets/new/", datasets_views.dataset_new, name="dataset_new"),
    path("s3/credentials/", datasets_views.s3_credentials, name="s3_credentials"),
    path("s3/credentials/<id:pk>/delete/", datasets_views.s3_credential_delete, name="s3_credential_delete"),
    path("datasets/<id:pk>/", datasets_views.dataset_detail, name="dataset_detail"),
    path("datasets/preview/", datasets_views.dataset_preview, name="dataset_preview"),
    path("datasets/<id:pk>/mean.png", datasets_views.dataset_mean_image, name="dataset_mean_image"),
    path("datasets/<id:pk>/edit/", datasets_views.dataset_edit, name="dataset_edit"),
    path("datasets/<id:pk>/explore/", datasets_views.dataset_explore, name="dataset_explore"),
    path(
        "datasets/<id:pk>/images/<str:split>/<int:index>.img",
        datasets_views.dataset_image_view,
        name="dataset_image",
    ),
    path("datasets/<id:pk>/abort/", datasets_views.dataset_abort, name="dataset_abort"),
    path("datasets/<id:pk>/delete/", datasets_views.dataset_remove, name="dataset_delete"),
    path("models/", models_views.model_list_view, name="model_list"),
    path("models/new/", models_views.model_new, name="model_new"),
    path("models/import/", models_views.model_import_view, name="model_import"),
    path("models/compare/", models_views.model_compare_view, name="model_compare"),
    path("models/<id:pk>/", models_views.model_detail, name="model_detail"),
    path("models/<id:pk>/classify/", models_views.model_classify, name="model_classify"),
    path("models/<id:pk>/evaluate/", evaluation_views.evaluation_new, name="model_evaluate"),
    path("models/<id:pk>/export/", export_views.export_new, name="model_export"),
    path("exports/<id:pk>/delete/", export_views.export_remove, name="export_delete"),
    path("evaluations/compare/", evaluation_views.evaluation_compare_view, name="evaluation_compare"),
    path("evaluations/<id:pk>/", evaluation_views.evaluation_detail, name="evaluation_detail"),
    path("evaluations/<id:pk>/images/<int:index>.img", evaluation_views.evaluation_image_view, name="evaluation_image"),
    path("evaluations/<id:pk>/abort/", evaluation_views.evaluation_abort, name="evaluation_abort"),
    path("evaluations/<id:pk>/delete/", evaluation_views.evaluation_remove, name="evaluation_delete"),
    path("sweeps/", sweep_views.sweep_list_view, name="sweep_list"),
    path("sweeps/<id:pk>/", sweep_views.sweep_detail, name="sweep_detail"),
    path("sweeps/<id:pk>/abort/", sweep_views.sweep_abort_view, name="sweep_abort"),
    path("models/<id:pk>/abort/", models_views.model_abort, name="model_abort"),
    path("models/<id:pk>/rerun/", models_views.model_rerun, name="model_rerun"),
    path("models/<id:pk>/resume/", models_views.model_resume_view, name="model_resume"),
    path("models/<id:pk>/edit/", models_views.model_edit, name="model_edit"),
    path("models/<id:pk>/delete/", models_views.model_remove, name="model_delete"),
    path("jobs/<id:pk>/log/", frontend_views.job_log, name="job_log"),
    path("jobs/bulk/", workers_views.jobs_bulk_view, name="jobs_bulk"),
    path("cluster/", workers_views.cluster, name="cluster"),
    path("cluster/devices/<id:pk>/", workers_views.cluster_device, name="cluster_device"),
    path("cluster/jobs/<id:pk>/", workers_views.cluster_job, name="cluster_job"),
    path("cluster/limits/<id:user_id>/", workers_views.cluster_limit, name="cluster_limit"),
    path("cluster/teams/<id:team_id>/", workers_views.cluster_team_limit, name="cluster_team_limit"),
    path("cluster/audit/", workers_views.cluster_audit, name="cluster_audit"),
    path("api/", include(api_patterns)),
    path("admin/", admin.site.urls),
]

# Errors outside the views (no URL matched, a crash): JSON under /api/, pages elsewhere.
handler400 = frontend_views.bad_request
handler404 = frontend_views.not_found
handler500 = frontend_views.server_error
