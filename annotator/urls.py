"""Each views module owns its URL patterns; this file only concatenates them."""

from __future__ import annotations

from annotator import api, hot_path
from annotator.views import annotate, imports, research

# The hot path first: its two URLs sit inside the API router's prefix.
urlpatterns = (
    hot_path.urlpatterns + annotate.urlpatterns + research.urlpatterns + imports.urlpatterns + api.urlpatterns
)
