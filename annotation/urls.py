from django.urls import path

from annotation import api, views

api_urls = [
    path("campaigns/", api.CampaignListApi.as_view(), name="api-campaigns"),
    path("campaigns/<slug:slug>/", api.CampaignDetailApi.as_view(), name="api-campaign"),
    path("campaigns/<slug:slug>/next/", api.NextComparisonApi.as_view(), name="api-next"),
    path("campaigns/<slug:slug>/preferences.jsonl", api.PreferenceExportApi.as_view(), name="api-export"),
    path("campaigns/<slug:slug>/prompts/import/", api.PromptImportApi.as_view(), name="api-import-prompts"),
    path("campaigns/<slug:slug>/preferences/import/", api.PreferenceImportApi.as_view(), name="api-import-preferences"),
    path("assignments/<int:assignment_id>/vote/", api.VoteSubmitApi.as_view(), name="api-vote"),
    path("assignments/<int:assignment_id>/skip/", api.SkipApi.as_view(), name="api-skip"),
    path("votes/", api.VoteListApi.as_view(), name="api-votes"),
]

page_urls = [
    path("", views.home, name="home"),
    path("annotate/<slug:slug>/", views.annotate, name="annotate"),
]
