"""Prefloop's training library: standalone, torch-based, never imports Django or Celery.

Torch-free modules may be imported by the web side: ``formats``, ``params``, ``config``,
``seeds``, ``data`` and ``recipes``; everything else may not. Nothing here runs at import.
"""
