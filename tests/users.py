"""Shared users, one per role, for every test module (pytest picks these fixtures up from conftest)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User

PASSWORD = "correct-horse-battery"


def make_user(username: str, role: str | None) -> User:
    admin = role == "admin"
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=admin, is_superuser=admin)
    if role in ("annotator", "researcher"):
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def annotator(db: Any) -> User:
    return make_user("ann1", "annotator")


@pytest.fixture
def annotator2(db: Any) -> User:
    return make_user("ann2", "annotator")


@pytest.fixture
def researcher(db: Any) -> User:
    return make_user("res1", "researcher")


@pytest.fixture
def admin_user(db: Any) -> User:
    return make_user("admin1", "admin")
