from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    # One test database per pytest process, so two runs on one machine (or one PostgreSQL)
    # never share or drop each other's database.
    from pytest_django.fixtures import _set_suffix_to_test_databases

    _set_suffix_to_test_databases(suffix=f"p{os.getpid()}")


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    settings.MEDIA_ROOT = str(tmp_path_factory.mktemp("media"))


from tests.users import *  # noqa: E402,F403  (shared users with roles, one per role)


@pytest.fixture(scope="session", autouse=True)
def _remove_run_var_dir() -> Iterator[None]:
    # settings gives each pytest run its own var dir under the temp folder; leave nothing behind.
    yield
    from django.conf import settings

    var_dir = Path(settings.VAR_DIR)
    if var_dir.name == f"facebench-test-{os.getpid()}":
        shutil.rmtree(var_dir, ignore_errors=True)
