from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token

from datasets import api as datasets_api
from datasets import views as datasets_views
from frontend import views as frontend_views
from models_app import api as models_api
from models_app import views as models_views
from workers import api as workers_api
from workers import views as workers_views

api_patterns = [
    path("token/", obtain_auth_token, name="api_token"),
    path("jobs/", workers_api.JobListApi.as_view(), name="api_jobs"),
    path("datasets/", datasets_api.DatasetListApi.as_view(), name="api_datasets"),
    path("datasets/<int:pk>/", datasets_api.DatasetDetailApi.as_view(), name="api_dataset"),
    path("datasets/<int:pk>/abort/", datasets_api.DatasetAbortApi.as_view(), name="api_dataset_abort"),
    path("datasets/<int:pk>/clone/", datasets_api.DatasetCloneApi.as_view(), name="api_dataset_clone"),
    path("datasets/<int:pk>/images/", datasets_api.DatasetImagesApi.as_view(), name="api_dataset_images"),
    path(
        "datasets/<int:pk>/images/<str:split>/<int:index>/",
        datasets_api.DatasetImageApi.as_view(),
        name="api_dataset_image",
    ),
    path("uploads/", datasets_api.UploadListApi.as_view(), name="api_uploads"),
    path("uploads/<str:pk>/", datasets_api.UploadDetailApi.as_view(), name="api_upload"),
    path("models/", models_api.ModelListApi.as_view(), name="api_models"),
    path("models/<int:pk>/", models_api.ModelDetailApi.as_view(), name="api_model"),
    path("models/<int:pk>/abort/", models_api.ModelAbortApi.as_view(), name="api_model_abort"),
    path("models/<int:pk>/resume/", models_api.ModelResumeApi.as_view(), name="api_model_resume"),
    path("models/<int:pk>/clone/", models_api.ModelCloneApi.as_view(), name="api_model_clone"),
    path("models/<int:pk>/metrics/", models_api.ModelMetricsApi.as_view(), name="api_model_metrics"),
    path("models/<int:pk>/classify/", models_api.ModelClassifyApi.as_view(), name="api_model_classify"),
    path("models/<int:pk>/download/", models_api.ModelDownloadApi.as_view(), name="api_model_download"),
    path("networks/", models_api.NetworkListApi.as_view(), name="api_networks"),
    path("networks/visualize/", models_api.VisualizeApi.as_view(), name="api_network_visualize"),
    path("networks/<str:name>/", models_api.NetworkDetailApi.as_view(), name="api_network"),
    path("lr-preview/", models_api.LrPreviewApi.as_view(), name="api_lr_preview"),
    path("jobs/<int:pk>/log/", workers_api.JobLogApi.as_view(), name="api_job_log"),
    path("devices/", workers_api.DeviceListApi.as_view(), name="api_devices"),
    path("devices/<int:pk>/", workers_api.DeviceDetailApi.as_view(), name="api_device"),
    path("queue/", workers_api.QueueApi.as_view(), name="api_queue"),
    path("queue/<int:pk>/", workers_api.QueueJobApi.as_view(), name="api_queue_job"),
    path("usage/", workers_api.UsageApi.as_view(), name="api_usage"),
    path("users/<int:user_id>/device-limit/", workers_api.UserLimitApi.as_view(), name="api_user_limit"),
    path("schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api_schema"), name="api_docs"),
]

urlpatterns = [
    path("", frontend_views.home, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("profile/", frontend_views.profile, name="profile"),
    path("profile/token/", frontend_views.profile_token, name="profile_token"),
    path("datasets/new/", datasets_views.dataset_new, name="dataset_new"),
    path("datasets/<int:pk>/", datasets_views.dataset_detail, name="dataset_detail"),
    path("datasets/preview/", datasets_views.dataset_preview, name="dataset_preview"),
    path("datasets/<int:pk>/mean.png", datasets_views.dataset_mean_image, name="dataset_mean_image"),
    path("datasets/<int:pk>/edit/", datasets_views.dataset_edit, name="dataset_edit"),
    path("datasets/<int:pk>/explore/", datasets_views.dataset_explore, name="dataset_explore"),
    path(
        "datasets/<int:pk>/images/<str:split>/<int:index>.img",
        datasets_views.dataset_image_view,
        name="dataset_image",
    ),
    path("datasets/<int:pk>/abort/", datasets_views.dataset_abort, name="dataset_abort"),
    path("datasets/<int:pk>/delete/", datasets_views.dataset_remove, name="dataset_delete"),
    path("models/new/", models_views.model_new, name="model_new"),
    path("models/<int:pk>/", models_views.model_detail, name="model_detail"),
    path("models/<int:pk>/classify/", models_views.model_classify, name="model_classify"),
    path("models/<int:pk>/abort/", models_views.model_abort, name="model_abort"),
    path("models/<int:pk>/resume/", models_views.model_resume_view, name="model_resume"),
    path("models/<int:pk>/edit/", models_views.model_edit, name="model_edit"),
    path("models/<int:pk>/delete/", models_views.model_remove, name="model_delete"),
    path("jobs/<int:pk>/log/", frontend_views.job_log, name="job_log"),
    path("cluster/", workers_views.cluster, name="cluster"),
    path("cluster/devices/<int:pk>/", workers_views.cluster_device, name="cluster_device"),
    path("cluster/jobs/<int:pk>/", workers_views.cluster_job, name="cluster_job"),
    path("cluster/limits/<int:user_id>/", workers_views.cluster_limit, name="cluster_limit"),
    path("api/", include(api_patterns)),
    path("admin/", admin.site.urls),
]
