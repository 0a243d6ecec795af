"""Loading the WSGI application imports every view, so a new web worker never makes its first
request wait for the ML stack to import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_loading_the_wsgi_application_imports_the_url_configuration_and_its_views():
    probe = (
        "import sys, config.wsgi; "
        "print(all(m in sys.modules for m in ('config.urls', 'annotator.hot_path', 'benchmark.urls')))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
