from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application
from django.db import connections
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Import every view now, while the worker boots, not on its first request: the research pages
# import the ML stack, about 3 s of CPU that would otherwise land on whichever request a new
# worker served first. Under gunicorn --preload this happens once, in the master, before the fork.
get_resolver().url_patterns  # noqa: B018
# Nothing above should touch the database; if an import ever does, its connection must not be
# shared by the workers forked from here.
connections.close_all()
