"""Every model has a Django admin page that an admin can open."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.test import Client

pytestmark = pytest.mark.django_db

OUR_APPS = ("jobs", "annotator", "benchmark")


def test_every_model_is_registered_and_its_list_opens(admin_user):
    client = Client()
    client.force_login(admin_user)
    for app in OUR_APPS:
        for model in apps.get_app_config(app).get_models():
            assert admin.site.is_registered(model), f"{model.__name__} has no admin"
            url = f"/admin/{app}/{model._meta.model_name}/"
            assert client.get(url).status_code == 200, url
