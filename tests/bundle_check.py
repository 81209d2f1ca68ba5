"""Offline checks of the Databricks asset bundle (``databricks.yml`` + ``resources/*.yml``):
test tooling, used by tests/test_bundle.py (not shipped in the wheel).

No workspace is needed: the bundle is loaded and its includes merged, ``${...}`` references
are resolved for one target the way the Databricks CLI does, and every job is then checked
for what would otherwise fail only after a deploy - unknown fields and wrong types (through
``databricks.bundles.jobs.Job.from_dict`` when ``databricks-bundles`` is installed), task
graphs, cluster keys, wheel paths, entry points, files, and task parameters that the
``sparkeras`` CLI and the target's configuration must accept.
"""
from __future__ import annotations

import copy
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

REF = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")
# Job parameter "dynamic value references", filled in by Databricks when a run starts.
DYNAMIC = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")
_TIME_ARGS = {"iso_date", "iso_datetime", "year", "month", "day", "hour", "minute", "second",
              "timestamp_ms", "is_weekday"}
_DYNAMIC_KNOWN = re.compile(
    r"job\.(id|name|run_id|repair_count|trigger\.type|parameters\.[\w-]+"
    r"|(start_time|trigger\.time)\.(?P<time>\w+))"
    r"|task\.(name|run_id|execution_count|notebook_path)"
    r"|tasks\.[\w-]+\.(run_id|result_state|error_code|execution_count|values\.[\w-]+)"
    r"|workspace\.(id|url)")
# What each time argument looks like, for parsing task parameters offline.
_SAMPLE_TIME = {"iso_date": "2026-11-21", "iso_datetime": "2026-11-21T06:00:00Z",
                "timestamp_ms": "1795240800000", "is_weekday": "true"}


class BundleError(ValueError):
    """The bundle would fail to deploy or to run; the message names the file, job and task."""


@dataclass
class Bundle:
    """A loaded bundle: the merged document and, per job, the file that defined it."""
    root: Path
    document: dict
    job_files: dict[str, Path] = field(default_factory=dict)


def load_bundle(root: str | Path) -> Bundle:
    """Read ``databricks.yml`` under ``root`` and merge the resources of its ``include``s."""
    root = Path(root)
    main = root / "databricks.yml"
    if not main.is_file():
        raise BundleError(f"no databricks.yml in {root}")
    doc = _read_yaml(main)
    bundle = Bundle(root, doc)
    _collect_jobs(bundle, doc, main)
    for pattern in doc.get("include", []):
        matches = sorted(glob.glob(str(root / pattern)))
        if not matches:
            raise BundleError(f"databricks.yml: include {pattern!r} matches no file")
        for path in matches:
            part = _read_yaml(Path(path))
            unknown = set(part) - {"resources", "variables", "targets", "artifacts"}
            if unknown:
                raise BundleError(f"{path}: unexpected top-level keys {sorted(unknown)}")
            _collect_jobs(bundle, part, Path(path))
            for kind, items in (part.get("resources") or {}).items():
                merged = doc.setdefault("resources", {}).setdefault(kind, {})
                for name, body in items.items():
                    if name in merged:
                        raise BundleError(f"{path}: {kind} {name!r} is defined twice")
                    merged[name] = body
    return bundle


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BundleError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: the top level must be a mapping")
    return data


def _collect_jobs(bundle: Bundle, part: dict, path: Path) -> None:
    for name in ((part.get("resources") or {}).get("jobs") or {}):
        bundle.job_files[name] = path


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def resolve(bundle: Bundle, target: str, file_path: Optional[str] = None,
            user: str = "someone@example.com") -> dict:
    """The bundle as the CLI sees it for ``target``: target overrides applied and every
    ``${var.*}``, ``${bundle.*}`` and ``${workspace.*}`` reference replaced.

    ``file_path`` stands for ``${workspace.file_path}`` (default: the bundle root, so that
    files the jobs reference can be checked locally). A string that is exactly one
    reference takes the referenced value with its type, as in the CLI.
    """
    doc = copy.deepcopy(bundle.document)
    targets = doc.get("targets") or {}
    if target not in targets:
        raise BundleError(f"unknown target {target!r}; the bundle has {sorted(targets)}")
    over = targets[target] or {}
    declared = doc.get("variables") or {}
    for name in (over.get("variables") or {}):
        if name not in declared:
            raise BundleError(f"target {target!r} sets undeclared variable {name!r}")
    values = {}
    for name, spec in declared.items():
        spec = spec or {}
        if name in (over.get("variables") or {}):
            values[name] = over["variables"][name]
        elif "default" in spec:
            values[name] = spec["default"]
        else:
            raise BundleError(f"variable {name!r} has no default and target {target!r} does not "
                              f"set it")
    for key in ("workspace", "permissions", "run_as", "presets", "artifacts"):
        if key in over:
            doc[key] = (_deep_merge(doc.get(key) or {}, over[key]) if isinstance(over[key], dict)
                        else over[key])
    if "resources" in over:
        doc["resources"] = _deep_merge(doc.get("resources") or {}, over["resources"])
    root_path = f"/Workspace/Users/{user}/.bundle/{doc['bundle']['name']}/{target}"
    context = {"bundle.target": target, "bundle.name": doc["bundle"]["name"],
               "workspace.current_user.userName": user,
               "workspace.current_user.short_name": user.split("@")[0]}
    context["workspace.root_path"] = _substitute(
        (doc.get("workspace") or {}).get("root_path", root_path), context, "workspace.root_path")
    context["workspace.file_path"] = file_path if file_path is not None else str(bundle.root)
    for name in values:           # variables may refer to other variables
        values[name] = _resolve_variable(name, values, context, [])
    context.update({f"var.{k}": v for k, v in values.items()})
    doc = _substitute(doc, context, "")
    doc["targets"] = {target: doc["targets"][target]}
    return doc


def _resolve_variable(name: str, values: dict, context: dict, chain: list) -> Any:
    if name in chain:
        raise BundleError(f"variables refer to each other in a cycle: {' -> '.join(chain + [name])}")
    value = values[name]
    if not isinstance(value, str):
        return value
    for ref in REF.findall(value):
        if ref.startswith("var."):
            inner = ref[4:]
            if inner not in values:
                raise BundleError(f"variable {name!r} refers to undeclared ${{{ref}}}")
            values[inner] = _resolve_variable(inner, values, context, chain + [name])
    return _substitute(value, {**context, **{f"var.{k}": v for k, v in values.items()}}, name)


def _substitute(obj: Any, context: dict, where: str) -> Any:
    if isinstance(obj, dict):
        return {k: _substitute(v, context, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, context, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, str):
        return obj
    refs = REF.findall(obj)
    for ref in refs:
        if ref not in context:
            raise BundleError(f"{where}: unknown reference ${{{ref}}}")
    whole = REF.fullmatch(obj)
    if whole:
        return context[whole.group(1)]
    return REF.sub(lambda m: str(context[m.group(1)]), obj)


# ------------------------------------------------------------------------------ checks

def dynamic_sample(text: str, where: str = "") -> str:
    """``text`` with each ``{{...}}`` dynamic value reference replaced by a typical value;
    an unknown reference is an error (Databricks would pass it through literally)."""
    def sample(m: re.Match) -> str:
        ref = m.group(1)
        known = _DYNAMIC_KNOWN.fullmatch(ref)
        if not known:
            raise BundleError(f"{where}: unknown dynamic value reference {{{{{ref}}}}}")
        arg = known.group("time")
        if arg is not None and arg not in _TIME_ARGS:
            raise BundleError(f"{where}: {{{{{ref}}}}}: unknown time argument {arg!r} "
                              f"(one of {sorted(_TIME_ARGS)})")
        return _SAMPLE_TIME.get(arg, "1") if arg else "1"
    return DYNAMIC.sub(sample, text)


def task_graph_errors(job_name: str, job: dict) -> list[str]:
    """Unknown or cyclic ``depends_on``, duplicate task keys, undefined cluster keys."""
    errors = []
    tasks = job.get("tasks") or []
    keys = [t.get("task_key") for t in tasks]
    for k in {k for k in keys if keys.count(k) > 1}:
        errors.append(f"job {job_name}: task_key {k!r} is used twice")
    clusters = {c.get("job_cluster_key") for c in job.get("job_clusters") or []}
    deps = {}
    for t in tasks:
        deps[t.get("task_key")] = [d.get("task_key") for d in t.get("depends_on") or []]
        for d in deps[t.get("task_key")]:
            if d not in keys:
                errors.append(f"job {job_name}: task {t.get('task_key')!r} depends on unknown "
                              f"task {d!r}")
        ck = t.get("job_cluster_key")
        if ck is not None and ck not in clusters:
            errors.append(f"job {job_name}: task {t.get('task_key')!r} uses undefined "
                          f"job_cluster_key {ck!r}")
    state: dict = {}

    def visit(k, path):
        if state.get(k) == "done":
            return
        if state.get(k) == "open":
            errors.append(f"job {job_name}: tasks depend on each other in a cycle: "
                          f"{' -> '.join(path + [k])}")
            return
        state[k] = "open"
        for d in deps.get(k, []):
            if d in deps:
                visit(d, path + [k])
        state[k] = "done"
    for k in deps:
        visit(k, [])
    return errors


def check_target(bundle: Bundle, target: str, entry_points: Mapping[str, Mapping[str, str]],
                 check_task_parameters: Optional[Callable[[str, list[str]], None]] = None,
                 validate_job: Optional[Callable[[dict], Any]] = None,
                 validate_endpoint: Optional[Callable[[dict], Any]] = None) -> dict:
    """Check every job of ``bundle`` for ``target``; return the resolved bundle.

    ``entry_points`` maps a package name to its console scripts (name -> object reference),
    as read from the wheel the bundle builds. ``check_task_parameters(where, params)``
    raises on parameters its program would reject. ``validate_job(job_dict)`` is the typed
    schema check (``Job.from_dict``), ``validate_endpoint`` that of a Model Serving endpoint
    (``ModelServingEndpoint.from_dict``). All problems are reported together in one
    BundleError.
    """
    doc = resolve(bundle, target)
    errors: list[str] = []
    if not (doc.get("bundle") or {}).get("name"):
        errors.append("databricks.yml: bundle.name is missing")
    defaults = [t for t, body in (bundle.document.get("targets") or {}).items()
                if (body or {}).get("default")]
    if len(defaults) != 1:
        errors.append(f"databricks.yml: exactly one target must be the default, found {defaults}")
    mode = (doc["targets"][target] or {}).get("mode")
    if mode not in ("development", "production"):
        errors.append(f"target {target}: mode must be development or production, got {mode!r}")
    wheel_dirs = {(bundle.root / a.get("path", ".") / "dist").resolve()
                  for a in (doc.get("artifacts") or {}).values() if a.get("type") == "whl"}
    jobs = (doc.get("resources") or {}).get("jobs") or {}
    if not jobs:
        errors.append("the bundle defines no jobs")
    for name, job in jobs.items():
        source = bundle.job_files.get(name, bundle.root / "databricks.yml")
        if validate_job is not None:
            try:
                validate_job(job)
            except (TypeError, ValueError, KeyError) as exc:
                errors.append(f"{source.name}: job {name}: {exc}")
        errors.extend(f"{source.name}: {e}" for e in task_graph_errors(name, job))
        environments = {e.get("environment_key"): e for e in job.get("environments") or []}
        for key, env in environments.items():
            errors.extend(f"{source.name}: job {name}, environment {key}: {e}"
                          for e in _environment_errors(env, source, wheel_dirs))
        for task in job.get("tasks") or []:
            where = f"{source.name}: job {name}, task {task.get('task_key')}"
            errors.extend(_task_errors(task, source, where, wheel_dirs, entry_points,
                                       check_task_parameters))
            errors.extend(_compute_errors(task, where, environments))
    for name, endpoint in ((doc.get("resources") or {}).get("model_serving_endpoints")
                           or {}).items():
        errors.extend(f"model_serving_endpoints {name}: {e}"
                      for e in endpoint_errors(endpoint, validate_endpoint))
    if errors:
        raise BundleError(f"target {target}:\n  " + "\n  ".join(errors))
    return doc


ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def endpoint_errors(endpoint: dict, validate: Optional[Callable[[dict], Any]]) -> list[str]:
    """What would make a serving endpoint fail to deploy: unknown fields and wrong types,
    a name the service rejects, a model that is not a Unity Catalog name at a version,
    traffic routes that name no served entity or do not add up to 100%."""
    errors = []
    if validate is not None:
        try:
            validate(endpoint)
        except (TypeError, ValueError, KeyError) as exc:
            errors.append(str(exc))
    name = str(endpoint.get("name", ""))
    if not ENDPOINT_NAME.fullmatch(name):
        errors.append(f"name {name!r}: letters, digits, - and _ only, at most 63 characters")
    config = endpoint.get("config") or {}
    entities = config.get("served_entities") or []
    if not entities:
        errors.append("config.served_entities is empty")
    for e in entities:
        if str(e.get("entity_name", "")).count(".") != 2:
            errors.append(f"entity_name {e.get('entity_name')!r} is not catalog.schema.model")
        if not str(e.get("entity_version", "")).isdigit():
            errors.append(f"entity_version {e.get('entity_version')!r} is not a version "
                          f"number (an endpoint cannot follow an alias)")
    routes = (config.get("traffic_config") or {}).get("routes") or []
    if routes:
        served = {e.get("name") or f"{e.get('entity_name', '').split('.')[-1]}-"
                                   f"{e.get('entity_version')}" for e in entities}
        unknown = [r.get("served_model_name") for r in routes
                   if r.get("served_model_name") not in served]
        if unknown:
            errors.append(f"traffic routes to unknown served entities {unknown}")
        if sum(int(r.get("traffic_percentage", 0)) for r in routes) != 100:
            errors.append("traffic percentages do not add up to 100")
    return errors


def _wheel_path_error(whl: str, source: Path, wheel_dirs: set) -> Optional[str]:
    """A relative wheel path that does not point where the bundle builds its wheel."""
    if "://" in whl or whl.startswith("/") or not whl.endswith(".whl"):
        return None
    folder = (source.parent / whl).parent.resolve()
    if folder not in wheel_dirs:
        return (f"{whl} is not where the bundle's wheel artifact is built "
                f"({sorted(map(str, wheel_dirs))})")
    return None


def _environment_errors(env: dict, source: Path, wheel_dirs: set) -> list[str]:
    """A serverless job environment: a version, and the bundle's wheel among its
    dependencies (where the bundle builds it)."""
    spec = env.get("spec") or {}
    errors = []
    if not (spec.get("environment_version") or spec.get("client")):
        errors.append("spec needs an environment_version")
    deps = [str(d) for d in spec.get("dependencies") or []]
    wheels = [d for d in deps if d.endswith(".whl")]
    if not wheels:
        errors.append("the bundle's wheel is not among its dependencies")
    errors.extend(e for e in (_wheel_path_error(w, source, wheel_dirs) for w in wheels) if e)
    return errors


def _compute_errors(task: dict, where: str, environments: dict) -> list[str]:
    """Each task runs on exactly one kind of compute: a job cluster (its key is checked with
    the task graph), an existing cluster, or (serverless) one of the job's environments."""
    kinds = [k for k in ("job_cluster_key", "existing_cluster_id", "environment_key")
             if task.get(k)]
    if len(kinds) != 1 and not task.get("notebook_task"):
        return [f"{where}: needs exactly one of job_cluster_key, existing_cluster_id, "
                f"environment_key (found {kinds})"]
    if task.get("environment_key") and task["environment_key"] not in environments:
        return [f"{where}: environment_key {task['environment_key']!r} is not one of the "
                f"job's environments ({sorted(environments)})"]
    return []


def _task_errors(task: dict, source: Path, where: str, wheel_dirs: set,
                 entry_points: Mapping, check_params: Optional[Callable]) -> list[str]:
    errors = []
    for lib in task.get("libraries") or []:
        problem = _wheel_path_error(lib.get("whl") or "", source, wheel_dirs)
        if problem:
            errors.append(f"{where}: library {problem}")
    params: Optional[list] = None
    wheel = task.get("python_wheel_task")
    if wheel:
        package, entry = wheel.get("package_name"), wheel.get("entry_point")
        if package not in entry_points:
            errors.append(f"{where}: package {package!r} is not the wheel the bundle builds "
                          f"({sorted(entry_points)})")
        elif entry not in entry_points[package]:
            errors.append(f"{where}: package {package!r} has no entry point {entry!r} "
                          f"({sorted(entry_points[package])})")
        if not task.get("libraries") and not task.get("environment_key"):
            errors.append(f"{where}: a python_wheel_task needs the wheel in its libraries")
        params = list(wheel.get("parameters") or [])
    script = task.get("spark_python_task")
    if script:
        path = _local(source, script.get("python_file", ""))
        if not path.is_file():
            errors.append(f"{where}: python_file {script.get('python_file')} does not exist")
        params = list(script.get("parameters") or [])
    notebook = task.get("notebook_task")
    if notebook:
        path = _local(source, notebook.get("notebook_path", ""))
        if not (path.is_file() or path.with_suffix(".py").is_file()):
            errors.append(f"{where}: notebook {notebook.get('notebook_path')} does not exist")
    if params is not None and check_params is not None:
        try:
            check_params(where, [dynamic_sample(str(p), where) for p in params])
        except (BundleError, ValueError, SystemExit) as exc:
            errors.append(f"{where}: parameters rejected: {exc}")
    return errors


def _local(source: Path, path: str) -> Path:
    """A task's file path on this machine (relative paths are relative to the yml file)."""
    p = Path(path)
    return p if p.is_absolute() else (source.parent / p).resolve()


def check_arguments(argv):
    """Parse ``argv`` with the CLI's own parser and load the configuration it names, as a
    run would, without running: (args, config). Raises ValueError with argparse's message
    (bad arguments) or ConfigError (bad configuration)."""
    import contextlib
    import io

    from sparkeras.cli import build_parser, config_from_args
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = build_parser().parse_args(list(argv))
    except SystemExit:
        raise ValueError(said.getvalue().strip().splitlines()[-1]) from None
    return args, config_from_args(args)
