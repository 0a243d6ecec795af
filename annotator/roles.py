"""Roles are Django groups: ``annotator`` and ``researcher``; admins are staff users.

Admins can do everything a researcher can; nobody but an annotator is served items.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from rest_framework import permissions

ANNOTATOR = "annotator"
RESEARCHER = "researcher"
ROLES = (ANNOTATOR, RESEARCHER)


def _in_group(user: Any, name: str) -> bool:
    if not user.is_authenticated:
        return False
    cache = getattr(user, "_facebench_groups", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True))
        user._facebench_groups = cache
    return name in cache


def is_researcher(user: Any) -> bool:
    return bool(user.is_authenticated and (user.is_staff or _in_group(user, RESEARCHER)))


def is_annotator(user: Any) -> bool:
    return _in_group(user, ANNOTATOR)


def is_admin(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_staff)


def require_researcher(request: Any) -> None:
    """Page access check: researchers and admins pass, everyone else gets 403."""
    if not is_researcher(request.user):
        raise PermissionDenied("Only researchers and admins can see this page.")


class IsResearcher(permissions.BasePermission):
    """API access check: researchers and admins."""

    message = "Only researchers and admins can do this."

    def has_permission(self, request: Any, view: Any) -> bool:
        return is_researcher(request.user)
