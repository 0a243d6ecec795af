"""Generate images with a DM into a dataset: ``manage.py launch generate`` under its own name.

    manage.py generate --set model=sd15 --set prompt_source=human_train --set seed_count=4 \\
        --set dataset_name=sd15-train
    manage.py generate --set model=sd15 --set lora=/artifacts/job-7/finetune/lora \\
        --set prompt_source=text --set 'prompt_text=a portrait of a nurse' --queue

Paths are relative to FACEBENCH_WEIGHTS_DIR (or absolute inside it, FACEBENCH_ARTIFACTS_DIR or
FACEBENCH_INPUT_DIRS). A rerun skips the images already made. ``--fields`` lists every setting;
see ``benchmark/generation.py`` for the steps.
"""

from __future__ import annotations

from benchmark.management.commands.launch import Command as LaunchCommand


class Command(LaunchCommand):
    help = (
        "Generate prompts × seeds with a text-to-image DM into a dataset (runs here, or --queue)."
    )
    kind = "generate"
