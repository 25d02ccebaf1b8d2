"""The admins' console: campaign overview, runs with live curves, promotion (Django templates + htmx + uPlot)."""
