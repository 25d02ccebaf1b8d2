from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from annotation import api_openai, schema
from annotation.urls import api_urls, page_urls

handler404 = "annotation.views.not_found"

admin.site.site_header = "Prefloop admin"
admin.site.site_title = "Prefloop"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include(api_urls)),
    # OpenAI-compatible: any OpenAI client with base_url=<prefloop>/v1 talks to the policy versions.
    path("v1/chat/completions", api_openai.ChatCompletionsApi.as_view(), name="v1-chat-completions"),
    path("v1/models", api_openai.ModelListApi.as_view(), name="v1-models"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", schema.SwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include(page_urls)),
]
