"""Train a Face Score: ``manage.py launch train_face_score`` under its own name.

    manage.py train_face_score --set crafting_jobs=[12] --set campaigns=[4] --set max_steps=2000
    manage.py train_face_score --config train.json --queue

On success the checkpoint becomes a new Face Score metric version, and a scoring job plus a
comparison report are started (see ``benchmark/training.py``). ``--fields`` lists every setting.
"""

from __future__ import annotations

from benchmark.management.commands.launch import Command as LaunchCommand


class Command(LaunchCommand):
    help = "Fine-tune ImageReward into a Face Score on crafted and human pairs (runs here, or --queue)."
    kind = "train_face_score"
