"""Launch any registered job kind from the shell (``benchmark.launch``): the same form, the same
validation and the same job as the page and the API.

    manage.py launch craft_pairs --set source=folder --set folder=/weights/photos \\
        --set model=/weights/sd15-inpainting --set batch_size=8
    manage.py launch train_face_score --config train.json --set max_steps=2000 --queue
    manage.py launch craft_pairs --fields        # every setting, its default and help

Steps: merge ``--config`` (a JSON object) and each ``--set key=value`` (the value is read as
JSON when it parses: numbers, true/false, lists like ``[3,4]``; as text otherwise) over the
kind's defaults; validate with the kind's form (errors by field, nothing created); then either
send the job to its Celery queue (``--queue``) or run its body here with a tqdm progress bar.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from benchmark import launch
from jobs import progress
from jobs.models import Job


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--set takes key=value, not {pair!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


class Command(BaseCommand):
    help = "Launch a job kind (craft_pairs, train_face_score, …) with validated settings."
    kind: str | None = None  # subclasses fix it (manage.py craft_pairs)

    def add_arguments(self, parser: CommandParser) -> None:
        if self.kind is None:
            parser.add_argument("kind", help="the job kind, e.g. craft_pairs or train_face_score")
        parser.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="one setting (repeatable)",
        )
        parser.add_argument("--config", type=Path, help="a JSON file of settings")
        parser.add_argument(
            "--queue",
            action="store_true",
            help="send the job to its Celery queue instead of running it here",
        )
        parser.add_argument("--user", help="username recorded as the job's creator")
        parser.add_argument(
            "--fields",
            action="store_true",
            help="list the settings with their defaults and help, then exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        kind = self.kind or options["kind"]
        if not launch.is_launchable(kind):
            raise CommandError(
                f"{kind!r} cannot be launched; launchable: {', '.join(k.kind for k in launch.kinds())}"
            )
        spec = launch.get_kind(kind)
        if options["fields"]:
            self._print_fields(spec)
            return
        data: dict[str, Any] = {}
        if options["config"]:
            try:
                data = json.loads(options["config"].read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CommandError(f"cannot read {options['config']}: {exc}") from None
            if not isinstance(data, dict):
                raise CommandError(f"{options['config']} must hold a JSON object")
        data.update(parse_sets(options["sets"]))
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user named {options['user']!r}")
        try:
            job = launch.launch(
                kind, data, created_by=user, fill_defaults=True, enqueue=options["queue"]
            )
        except launch.LaunchInvalid as invalid:
            lines = [
                f"  {field}: {' '.join(map(str, errors))}"
                for field, errors in invalid.form.errors.items()
            ]
            raise CommandError("invalid settings:\n" + "\n".join(lines)) from None
        if options["queue"]:
            self.stdout.write(
                f"{spec.title} job #{job.pk} queued on {spec.queue}; follow it at /jobs/{job.pk}/"
            )
            return
        self._run_here(spec, job)

    def _run_here(self, spec: launch.LaunchKind, job: Job) -> None:
        self.stdout.write(f"{spec.title} job #{job.pk}, running in this process")
        with tqdm(total=0, unit="step", dynamic_ncols=True) as bar:

            def observer(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            if "observer" in inspect.signature(spec.run).parameters:
                progress.run(job.pk, lambda job_id: spec.run(job_id, observer=observer))
            else:
                progress.run(job.pk, spec.run)
        job.refresh_from_db()
        self.stdout.write(json.dumps(job.result, indent=2, default=str))
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"job #{job.pk} {job.status}: {job.error or 'see its log'}")
        self.stdout.write(f"job #{job.pk} succeeded")

    def _print_fields(self, spec: launch.LaunchKind) -> None:
        for name, field in spec.form_class().fields.items():
            initial = field.initial() if callable(field.initial) else field.initial
            default = (
                "required"
                if field.required and initial is None
                else f"default {json.dumps(launch.json_safe(initial))}"
            )
            self.stdout.write(f"{name} ({default}): {field.help_text}")
