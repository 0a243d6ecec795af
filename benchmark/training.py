"""Face Score training jobs (filled in below the crafting service)."""

from __future__ import annotations
