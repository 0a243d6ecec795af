"""Fine-tune a DM on face pairs: ``manage.py launch finetune_dm`` under its own name.

    manage.py finetune_dm --set model=sd15 --set crafting_jobs=[12] --set max_steps=2000
    manage.py finetune_dm --set model=sd15 --set objective=dpo --set campaigns=[4] --queue

The output (LoRA safetensors or a diffusers folder) and validation images go to
FACEBENCH_ARTIFACTS_DIR/job-<id>/finetune; a rerun of the job resumes from its newest checkpoint.
``--fields`` lists every setting; see ``benchmark/finetuning.py`` for the steps.
"""

from __future__ import annotations

from benchmark.management.commands.launch import Command as LaunchCommand


class Command(LaunchCommand):
    help = "Fine-tune a text-to-image DM with the face guidance loss or Diffusion-DPO (runs here, or --queue)."
    kind = "finetune_dm"
