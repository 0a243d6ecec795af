"""Evaluate a tuned DM against its base: ``manage.py launch evaluate_dm`` under its own name.

    manage.py evaluate_dm --set tuned_job=15 --set seed_count=4
    manage.py evaluate_dm --set model=sd15 --set tuned_lora=my-lora --set prompt_limit=20 --queue

The report (paired differences tuned − base with bootstrap CIs) is the job's result, shown at
/research/evaluations/<job id>/. ``--fields`` lists every setting; see ``benchmark/evaluation.py``.
"""

from __future__ import annotations

from benchmark.management.commands.launch import Command as LaunchCommand


class Command(LaunchCommand):
    help = "Generate held-out prompts with base and tuned DM, score them, report paired differences (runs here, or --queue)."
    kind = "evaluate_dm"
