"""Django's PostgreSQL backend with a health check that costs no round trip.

With ``CONN_HEALTH_CHECKS`` Django sends ``SELECT 1`` before the first query of every request on
a persistent connection: on the annotation hot path that was one round trip in seven. A server
that drops a connection says so first (an error message such as "terminating connection due to
administrator command", then end of file), and between requests it has no other reason to send
anything; so the check looks, without waiting, whether the connection has anything to read.
Nothing: the connection is as the last request left it, and usable. Something: Django's own
``SELECT 1`` decides (it fails on a closed connection, which Django then replaces).
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        if self.connection is None or self.connection.closed:
            return False
        poller = select.poll()
        poller.register(self.connection.fileno(), select.POLLIN | select.POLLPRI)
        if not poller.poll(0):
            return True
        return bool(super().is_usable())
