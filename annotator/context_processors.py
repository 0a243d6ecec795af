from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from annotator.roles import is_annotator, is_researcher


def roles(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    return {
        "is_researcher": is_researcher(user),
        "is_annotator": is_annotator(user),
        "is_admin": bool(user.is_authenticated and user.is_staff),
    }
