"""Each views module owns its URL patterns; this file only concatenates them."""

from __future__ import annotations

from annotator import api
from annotator.views import annotate, imports, research

urlpatterns = annotate.urlpatterns + research.urlpatterns + imports.urlpatterns + api.urlpatterns
