"""Craft (good, bad) face pairs: ``manage.py launch craft_pairs`` under its own name.

    manage.py craft_pairs --set source=folder --set folder=photos --set model=sd15-inpainting
    manage.py craft_pairs --set source=dataset --set dataset=3 --set min_human_rating=4 --queue

Paths are relative to FACEBENCH_WEIGHTS_DIR (or absolute inside it, FACEBENCH_ARTIFACTS_DIR or
FACEBENCH_INPUT_DIRS). ``--fields`` lists every setting. See ``benchmark/pairs.py`` for the steps.
"""

from __future__ import annotations

from benchmark.management.commands.launch import Command as LaunchCommand


class Command(LaunchCommand):
    help = "Craft face pairs with an inpainting model (runs here with a progress bar, or --queue)."
    kind = "craft_pairs"
