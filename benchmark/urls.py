from __future__ import annotations

from benchmark.views import urlpatterns

__all__ = ["urlpatterns"]
