from django.urls import path

from annotation.console import evaluation_views, quality_views, views

urlpatterns = [
    path("", views.campaigns, name="console"),
    path("runs/compare/", views.compare, name="console-compare"),
    path("runs/<int:run_id>/", views.run, name="console-run"),
    path("runs/<int:run_id>/status/", views.run_status, name="console-run-status"),
    path("runs/<int:run_id>/series.json", views.run_series, name="console-run-series"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="console-run-cancel"),
    path("evaluations/<int:evaluation_id>/", evaluation_views.evaluation, name="console-evaluation"),
    path("evaluations/<int:evaluation_id>/promote/", evaluation_views.evaluation_promote, name="console-evaluation-promote"),
    path("evaluations/<int:evaluation_id>/cancel/", evaluation_views.evaluation_cancel, name="console-evaluation-cancel"),
    path("evaluations/<int:evaluation_id>/rollback/", evaluation_views.evaluation_rollback, name="console-evaluation-rollback"),
    path("<slug:slug>/", views.campaign, name="console-campaign"),
    path("<slug:slug>/quality/", quality_views.quality, name="console-quality"),
    path("<slug:slug>/leaderboard/", quality_views.leaderboard, name="console-leaderboard"),
    path("<slug:slug>/judges/<slug:name>/run/", quality_views.judge_run, name="console-judge-run"),
    path("<slug:slug>/judges/", quality_views.judge_save, name="console-judge-save"),
    path("<slug:slug>/judge-gate/", quality_views.judge_gate_save, name="console-judge-gate"),
    path("<slug:slug>/quality/<slug:table>.csv", quality_views.quality_csv, name="console-quality-csv"),
    path("<slug:slug>/guideline/", quality_views.guideline, name="console-guideline"),
    path("<slug:slug>/run-form/", views.run_form, name="console-run-form"),
    path("<slug:slug>/runs/", views.run_start, name="console-run-start"),
    path("<slug:slug>/promote/", views.promote, name="console-promote"),
    path("<slug:slug>/rollback/", views.rollback, name="console-rollback"),
    path("<slug:slug>/evaluations/", evaluation_views.evaluation_start, name="console-evaluation-start"),
]
