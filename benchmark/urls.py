from __future__ import annotations

from benchmark import evaluation_views, launch_views, report_views, views

urlpatterns = (
    views.urlpatterns
    + report_views.urlpatterns
    + launch_views.urlpatterns
    + evaluation_views.urlpatterns
)

__all__ = ["urlpatterns"]
