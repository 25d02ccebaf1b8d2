"""Prefloop's training library: standalone, torch-based, never imports Django or Celery.

Torch-free modules (``formats``) may be imported by the web side; everything else may not.
"""
