from __future__ import annotations

from benchmark import report_views, views

urlpatterns = views.urlpatterns + report_views.urlpatterns

__all__ = ["urlpatterns"]
