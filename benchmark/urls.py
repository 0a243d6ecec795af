from __future__ import annotations

from benchmark import launch_views, report_views, views

urlpatterns = views.urlpatterns + report_views.urlpatterns + launch_views.urlpatterns

__all__ = ["urlpatterns"]
