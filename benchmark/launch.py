"""Jobs that admins launch from a form, the API or ``manage.py``: one registry, one code path.

A launchable job kind is a :class:`LaunchKind`: a Django form that validates the settings (the
same form serves the page, the API's JSON body and the commands' ``--set key=value``), the body
that runs the job in a worker (``run(job_id) -> result``), and the queue it runs on. Launching:

1. ``launch(kind, data, created_by)`` binds the kind's form to ``data``; invalid data raises
   :class:`LaunchInvalid` carrying the bound form (errors next to their fields), and nothing is
   written.
2. The form's ``to_config()`` is the job's JSON config; the ``Job`` row is created and, on commit,
   ``benchmark.run_launched_job`` is sent to the kind's queue with the job id.
3. In the worker, ``run_launched_job`` looks the kind up again and runs its body under
   ``jobs.progress.run`` (running → succeeded / failed / cancelled, log tail, result).

Cancelling is ``jobs.progress.request_cancel``: a queued job is cancelled at once, a running one
stops at its next step (bodies pass ``jobs.progress.CancelCheck`` as ``should_stop``).

Adding a kind (issue 6's generate / finetune_dm / evaluate_dm): write a module with a
``LaunchForm`` subclass and a ``run(job_id)`` body, call :func:`register` at its bottom, and make
sure the module is in ``KIND_MODULES``. The pages, API, cancel, artifacts and ``manage.py launch``
follow; a ``manage.py <kind>`` alias is a three-line subclass of the ``launch`` command.

Paths typed into a form (model folders, photo folders) are checked by :func:`check_input_path`:
they must exist under ``FACEBENCH_WEIGHTS_DIR``, ``FACEBENCH_ARTIFACTS_DIR`` or a folder listed
in ``FACEBENCH_INPUT_DIRS``; anything else (``/etc``, ``..`` tricks, symlinks out) is refused.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from django import forms
from django.conf import settings
from django.db import models, transaction

from jobs import progress
from jobs.models import Job

logger = logging.getLogger(__name__)

# Modules that register launchable kinds; imported on first use of the registry. A listed module
# that does not exist (yet) is skipped; one that exists and fails to import raises.
KIND_MODULES: tuple[str, ...] = (
    "benchmark.pairs",  # craft_pairs
    "benchmark.training",  # train_face_score
    "benchmark.generation",  # generate (issue 6)
    "benchmark.finetuning",  # finetune_dm (issue 6)
    "benchmark.evaluation",  # evaluate_dm (issue 6)
)
DEFAULT_TIME_LIMIT_S = 3 * 24 * 3600  # a long training run; Celery kills the task after this


class LaunchRefused(Exception):
    """A launch that cannot go ahead; ``message`` says why, in words for the admin."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LaunchInvalid(LaunchRefused):
    """The settings did not validate; ``form`` is the bound form with its errors."""

    def __init__(self, form: forms.Form) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items()))
        self.form = form


# --- server-side paths ----------------------------------------------------------------------


def allowed_input_roots() -> list[Path]:
    roots = [settings.FACEBENCH_WEIGHTS_DIR, settings.FACEBENCH_ARTIFACTS_DIR]
    roots += list(getattr(settings, "FACEBENCH_INPUT_DIRS", []))
    return [Path(root).resolve() for root in roots]


def check_input_path(
    value: str, *, what: str = "path", want: Literal["dir", "file", "any"] = "any"
) -> Path:
    """``value`` as a resolved path that exists inside an allowed root; else ``ValidationError``.

    A relative path is taken relative to ``FACEBENCH_WEIGHTS_DIR``. Symlinks are resolved before
    the check, so a link inside the weights dir that points at ``/etc`` is refused too.
    """
    text = (value or "").strip()
    if not text:
        raise forms.ValidationError(f"Give the {what}.")
    if "\x00" in text:
        raise forms.ValidationError(f"The {what} contains a NUL character.")
    given = Path(os.path.expanduser(text))
    if not given.is_absolute():
        given = Path(settings.FACEBENCH_WEIGHTS_DIR) / given
    path = given.resolve()
    roots = allowed_input_roots()
    if not any(path.is_relative_to(root) for root in roots):
        listed = ", ".join(str(root) for root in roots)
        raise forms.ValidationError(
            f"{text} is outside the folders a job may read ({listed}). Put it under "
            "FACEBENCH_WEIGHTS_DIR, or add its folder to FACEBENCH_INPUT_DIRS."
        )
    if not path.exists():
        raise forms.ValidationError(f"{path} does not exist.")
    if want == "dir" and not path.is_dir():
        raise forms.ValidationError(f"{path} is not a folder.")
    if want == "file" and not path.is_file():
        raise forms.ValidationError(f"{path} is not a file.")
    return path


class ServerPathField(forms.CharField):
    """A path on the worker's disk, checked by :func:`check_input_path`; cleaned to a string."""

    def __init__(self, *, want: Literal["dir", "file", "any"] = "any", **kwargs: Any) -> None:
        self.want = want
        kwargs.setdefault("max_length", 1000)
        super().__init__(**kwargs)

    def clean(self, value: Any) -> str:
        value = super().clean(value)
        if not value:
            return ""
        return str(check_input_path(value, what=str(self.label or "path").lower(), want=self.want))


# --- forms built from the ml settings dataclasses --------------------------------------------


class LinesField(forms.CharField):
    """A list of strings typed one per line (or given as a JSON list through the API)."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        if isinstance(value, list | tuple):
            return [str(v).strip() for v in value if str(v).strip()]
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]


def _field_for(
    hint: Any, default: Any, *, label: str, help_text: str, required: bool = False
) -> forms.Field:
    common: dict[str, Any] = {"label": label, "help_text": help_text, "initial": default}
    if typing.get_origin(hint) is Literal:
        choices = [(c, c) for c in typing.get_args(hint)]
        return forms.ChoiceField(choices=choices, **common)
    if hint is bool:
        return forms.BooleanField(required=False, **common)
    if hint is int:
        return forms.IntegerField(**common)
    if hint is float:
        return forms.FloatField(**common)
    if typing.get_origin(hint) in (list, tuple):
        return LinesField(required=required, **common)
    # str and anything else (str | None, paths) as free text
    return forms.CharField(required=required, strip=False, **common)


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None  # a required setting: no initial value, the form field is required


def settings_fields(
    cls: type[Any],
    *,
    prefix: str = "",
    help: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, forms.Field]:
    """Form fields for the settings dataclass ``cls``: one per field, the dataclass default as the
    initial value, nested dataclasses flattened as ``outer__inner``. Types give the widgets
    (``Literal`` → a choice, ``bool`` → a checkbox, ``list[str]`` → one per line)."""
    help = help or {}
    skip = set(exclude)
    hints = typing.get_type_hints(cls)
    out: dict[str, forms.Field] = {}
    for field in dataclasses.fields(cls):
        if not field.init or field.name in skip:
            continue
        name = f"{prefix}{field.name}"
        hint = hints[field.name]
        default = _default_of(field)
        if dataclasses.is_dataclass(hint):
            nested_help = {
                k.split(".", 1)[1]: v for k, v in help.items() if k.startswith(f"{field.name}.")
            }
            out.update(settings_fields(hint, prefix=f"{name}__", help=nested_help))  # type: ignore[arg-type]
            continue
        label = field.name.replace("_", " ").capitalize()
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        out[name] = _field_for(
            hint, default, label=label, help_text=help.get(field.name, ""), required=required
        )
    return out


def flat_field_names(cls: type[Any], *, prefix: str = "") -> list[str]:
    """The flattened form field names of every field of the settings dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            names += flat_field_names(hints[field.name], prefix=f"{prefix}{field.name}__")
        elif field.init:
            names.append(f"{prefix}{field.name}")
    return names


def settings_data(
    cls: type[Any], cleaned: Mapping[str, Any], *, prefix: str = ""
) -> dict[str, Any]:
    """The nested dict ``cls.from_dict`` takes, read back from the flattened form values."""
    hints = typing.get_type_hints(cls)
    data: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        name = f"{prefix}{field.name}"
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            data[field.name] = settings_data(hint, cleaned, prefix=f"{name}__")  # type: ignore[arg-type]
        elif name in cleaned and cleaned[name] is not None:
            data[field.name] = cleaned[name]
    return data


def json_safe(value: Any) -> Any:
    """Form values as JSON: model rows by primary key, querysets as key lists, paths as text."""
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, models.QuerySet):
        return list(value.values_list("pk", flat=True))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class _LaunchFormMetaclass(forms.forms.DeclarativeFieldsMetaclass):
    """Adds a form field for every settings field its class does not declare itself."""

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> Any:
        new_class: Any = super().__new__(mcs, name, bases, attrs)
        for key, (settings_cls, prefix) in getattr(new_class, "settings_classes", {}).items():
            generated = settings_fields(
                settings_cls, prefix=prefix, help=new_class.settings_help.get(key, {})
            )
            for field_name, field in generated.items():
                if field_name not in new_class.base_fields:
                    new_class.base_fields[field_name] = field
        return new_class


class LaunchForm(forms.Form, metaclass=_LaunchFormMetaclass):
    """Base of every launch form.

    ``settings_classes`` maps a config key to ``(dataclass, field prefix)``: ``clean`` builds each
    dataclass through its ``from_dict`` (the ml side's own validation) and puts its ``to_dict()``
    under that key; a ``ValueError`` naming a field lands next to that field. Every other cleaned
    value goes into the config as is (rows as primary keys).
    """

    settings_classes: typing.ClassVar[dict[str, tuple[type[Any], str]]] = {}
    # Help text per settings field, by config key then dotted field name ("mask.margin").
    settings_help: typing.ClassVar[dict[str, dict[str, str]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: dict[str, Any] = {}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for key, (cls, prefix) in self.settings_classes.items():
            if any(name in self.errors for name in flat_field_names(cls, prefix=prefix)):
                continue  # a field already failed its own type check
            data = settings_data(cls, cleaned, prefix=prefix)
            try:
                self.settings[key] = cls.from_dict(data)
            except ValueError as exc:
                self.add_error(self._field_named_in(str(exc), cls, prefix), str(exc))
        return cleaned

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's initial value: what an API body or a command leaves out takes these."""
        initial = {name: field.initial for name, field in cls.base_fields.items()}
        return {k: v() if callable(v) else v for k, v in initial.items() if v is not None}

    def _field_named_in(self, message: str, cls: type[Any], prefix: str) -> str | None:
        """The form field a settings error message names (``mask.margin must …`` → ``mask__margin``)."""
        words = set(
            message.replace("`", " ").replace("'", " ").replace(",", " ").replace(":", " ").split()
        )
        named = [
            name
            for name in flat_field_names(cls, prefix=prefix)
            if name in self.fields and name[len(prefix) :].replace("__", ".") in words
        ]
        return max(named, key=len) if named else None

    def to_config(self) -> dict[str, Any]:
        config = {
            name: json_safe(value)
            for name, value in self.cleaned_data.items()
            if name not in self.settings_field_names()
        }
        for key, instance in self.settings.items():
            config[key] = instance.to_dict()
        return config

    @classmethod
    def settings_field_names(cls) -> set[str]:
        return {
            name
            for settings_cls, prefix in cls.settings_classes.values()
            for name in flat_field_names(settings_cls, prefix=prefix)
        }

    @classmethod
    def initial_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Initial form values that reproduce a job's config ("launch again with these settings")."""
        initial = {k: v for k, v in config.items() if k not in cls.settings_classes}
        for key, (_, prefix) in cls.settings_classes.items():
            initial.update(_flatten(config.get(key) or {}, prefix))
        return initial


def _flatten(data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}__"))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchKind:
    kind: str  # a jobs.models.Job.Kind value
    title: str
    description: str
    form_class: type[LaunchForm]
    # The job body, in the worker: run(job_id) -> result. A body that also takes a keyword
    # ``observer(done, total)`` gets one from ``manage.py launch`` (a tqdm bar).
    run: Callable[..., dict[str, Any] | None]
    queue: str = "gpu"  # a key of FACEBENCH_QUEUES
    time_limit_s: int = DEFAULT_TIME_LIMIT_S
    # Extra lines for the job page: (label, text, url or "") from the job's result.
    summary: Callable[[Job], list[tuple[str, str, str]]] | None = None


_REGISTRY: dict[str, LaunchKind] = {}
_discovered = False


def register(spec: LaunchKind) -> LaunchKind:
    if spec.kind not in Job.Kind.values:
        raise ValueError(f"{spec.kind!r} is not a Job.Kind")
    if spec.queue not in settings.FACEBENCH_QUEUES:
        raise ValueError(f"queue {spec.queue!r} is not one of FACEBENCH_QUEUES")
    _REGISTRY[spec.kind] = spec  # re-registering (a module reload) replaces the entry
    return spec


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in KIND_MODULES:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
        _discovered = True


def kinds() -> list[LaunchKind]:
    _discover()
    return list(_REGISTRY.values())


def get_kind(kind: str) -> LaunchKind:
    _discover()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"{kind!r} cannot be launched; launchable: {', '.join(_REGISTRY)}") from None


def is_launchable(kind: str) -> bool:
    _discover()
    return kind in _REGISTRY


def bind_form(kind: str, data: Mapping[str, Any] | None = None, **kwargs: Any) -> LaunchForm:
    return get_kind(kind).form_class(data, **kwargs)


def launch(
    kind: str,
    data: Mapping[str, Any],
    *,
    created_by: Any = None,
    fill_defaults: bool = False,
    enqueue: bool = True,
) -> Job:
    """Validate ``data`` with the kind's form, create the job and queue it (on commit).

    ``fill_defaults``: keys missing from ``data`` take the form's defaults (API bodies and
    commands name only what they change; an HTML form always sends every field, and an unticked
    checkbox is absent from it, so pages pass False). ``enqueue=False`` only creates the job, for
    a command that runs the body in its own process (``manage.py craft_pairs`` without ``--queue``).
    """
    spec = get_kind(kind)
    if fill_defaults:
        data = {**spec.form_class.defaults(), **data}
    form = spec.form_class(data)
    if not form.is_valid():
        raise LaunchInvalid(form)
    return create_job(spec, form.to_config(), created_by=created_by, enqueue=enqueue)


def create_job(
    spec: LaunchKind, config: dict[str, Any], *, created_by: Any = None, enqueue: bool = True
) -> Job:
    from benchmark.tasks import run_launched_job_task

    who = getattr(created_by, "username", None) or "a command"
    with transaction.atomic():
        job = Job.objects.create(kind=spec.kind, config=config, created_by=created_by)
        if enqueue:
            run_launched_job_task.apply_async_on_commit(
                (job.pk,),
                queue=settings.FACEBENCH_QUEUES[spec.queue],
                soft_time_limit=spec.time_limit_s,
                time_limit=spec.time_limit_s + 300,
            )
    progress.log(
        job.pk, f"queued on {spec.queue} by {who}" if enqueue else f"run in-process by {who}"
    )
    return job


def run_launched_job(job_id: int) -> None:
    """The worker side: run the job's body as its kind says (a finished job is left alone)."""
    job = Job.objects.filter(pk=job_id).only("kind").first()
    if job is None:
        logger.info("job %s no longer exists", job_id)
        return
    progress.run(job_id, get_kind(job.kind).run)


def cancel(job: Job) -> bool:
    """Ask the job to stop (see ``jobs.progress.request_cancel``); False if it already finished."""
    return progress.request_cancel(job.pk)


# --- artifacts ------------------------------------------------------------------------------

MAX_LISTED_ARTIFACTS = 500


def artifact_files(job: Job) -> list[dict[str, Any]]:
    """Files under the job's artifact folder (relative path, bytes), at most a few hundred."""
    root = job.artifact_dir
    if not root.is_dir():
        return []
    files = []
    for path in sorted(root.rglob("*")):
        # dot files are bookkeeping (the sha256 cache of ml.weights), not results
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            files.append({"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size})
            if len(files) >= MAX_LISTED_ARTIFACTS:
                break
    return files


def artifact_file(job: Job, relative: str) -> Path:
    """The file ``relative`` inside the job's artifact folder, or ``FileNotFoundError`` for
    anything else (a missing file, a folder, ``..``, an absolute path, a symlink out)."""
    root = job.artifact_dir.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or candidate == root or not candidate.is_file():
        raise FileNotFoundError(relative)
    return candidate


def relative_artifact(path: Path) -> str:
    """``path`` relative to ``FACEBENCH_ARTIFACTS_DIR``, the form stored in configs and settings."""
    return (
        Path(path)
        .resolve()
        .relative_to(Path(settings.FACEBENCH_ARTIFACTS_DIR).resolve())
        .as_posix()
    )
