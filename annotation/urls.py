from django.urls import include, path

from annotation import api, api_evaluations, api_quality, api_runs, views

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
    path("campaigns/<slug:slug>/promote/", api_runs.CampaignPromoteApi.as_view(), name="api-promote"),
    path("campaigns/<slug:slug>/rollback/", api_runs.CampaignRollbackApi.as_view(), name="api-rollback"),
    path("training-runs/", api_runs.TrainingRunListApi.as_view(), name="api-training-runs"),
    path("training-runs/<int:run_id>/", api_runs.TrainingRunDetailApi.as_view(), name="api-training-run"),
    path("training-runs/<int:run_id>/cancel/", api_runs.TrainingRunCancelApi.as_view(), name="api-training-run-cancel"),
    path("evaluations/", api_evaluations.EvaluationListApi.as_view(), name="api-evaluations"),
    path("evaluations/<int:evaluation_id>/", api_evaluations.EvaluationDetailApi.as_view(), name="api-evaluation"),
    path("evaluations/<int:evaluation_id>/cancel/", api_evaluations.EvaluationCancelApi.as_view(), name="api-evaluation-cancel"),
    path("promotions/", api_runs.PromotionListApi.as_view(), name="api-promotions"),
    path("campaigns/<slug:slug>/quality/", api_quality.CampaignQualityApi.as_view(), name="api-quality"),
    path("campaigns/<slug:slug>/judges/", api_quality.JudgeListApi.as_view(), name="api-judges"),
    path("campaigns/<slug:slug>/leaderboard/", api_quality.LeaderboardApi.as_view(), name="api-leaderboard"),
    path("campaigns/<slug:slug>/judges/<slug:name>/run/", api_quality.JudgeRunApi.as_view(), name="api-judge-run"),
]

page_urls = [
    path("", views.home, name="home"),
    path("annotate/<slug:slug>/", views.annotate, name="annotate"),
    path("console/", include("annotation.console.urls")),
]
