"""The Databricks bundle, checked offline for every target: the merged YAML with ${var.*}
resolved, every job through databricks-bundles' typed Job.from_dict, the wheel the bundle
builds (its entry point), and every task's parameters through the CLI parser and the
target's configuration."""
import copy
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from databricks.bundles.jobs import Job
from databricks.bundles.model_serving_endpoints import ModelServingEndpoint

from bundle_check import (
    BundleError,
    check_arguments,
    check_target,
    dynamic_sample,
    load_bundle,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["dev", "prod"]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(ROOT)


@pytest.fixture(scope="module")
def wheel_entry_points(bundle, tmp_path_factory):
    """Build the wheel with the bundle's own artifact command in a copy of the checkout and
    read the console scripts it declares: {package: {script: object}}."""
    src = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    (artifact,) = bundle.document["artifacts"].values()
    argv = shlex.split(artifact["build"])
    assert argv[0] == "python3"
    subprocess.run([sys.executable, *argv[1:]], cwd=src / artifact.get("path", "."), check=True,
                   capture_output=True)
    (whl,) = (src / "dist").glob("*.whl")
    package = whl.name.split("-")[0]
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        assert "sparkeras/cli.py" in names and "sparkeras/training/worker.py" in names
        # the package ships no test tooling: it lives in tests/
        assert not [n for n in names if n.startswith("sparkeras/") and
                    any(word in n for word in ("bundle", "test", "check"))], names
        assert "sparkeras/__main__.py" in names
        text = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    scripts = {}
    section = None
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "console_scripts":
            k, v = (s.strip() for s in line.split("=", 1))
            scripts[k] = v
    return {package: scripts}


def _check(bundle, target, entry_points, calls=None):
    def params(where, argv):
        args, cfg = check_arguments(argv)
        if calls is not None:
            calls.append((where, argv, args, cfg))
    return check_target(bundle, target, entry_points, params, Job.from_dict,
                        ModelServingEndpoint.from_dict)


@pytest.mark.parametrize("target", TARGETS)
def test_every_job_of_every_target_is_valid(bundle, wheel_entry_points, target):
    assert wheel_entry_points == {"sparkeras": {"sparkeras": "sparkeras.cli:main"}}
    calls = []
    doc = _check(bundle, target, wheel_entry_points, calls)
    jobs = doc["resources"]["jobs"]
    assert set(jobs) == {"incidents_pipeline", "images_pipeline", "score_incidents_daily"}
    assert len(calls) == sum(len(j["tasks"]) for j in jobs.values()) == 8
    catalog = {"dev": "main_dev", "prod": "main"}[target]
    for where, argv, args, cfg in calls:
        # Every task runs with its target's configuration and the bundle's catalog/schema.
        assert argv[argv.index("--conf") + 1] == str(ROOT / "conf" / f"{target}.yml"), where
        assert cfg.tables.format == "delta" and cfg.mlflow.registry_uri == "databricks-uc"
        assert cfg.tables.database == f"{catalog}.sparkeras"
        assert cfg.state_dir == f"/Volumes/{catalog}/sparkeras/state"
        assert cfg.registry.incident_model == f"{catalog}.sparkeras.incident_root_cause"
        assert cfg.registry.image_model == f"{catalog}.sparkeras.image_classifier"
        assert cfg.table_name(args.table).count(".") == 2, where


@pytest.mark.parametrize("target", TARGETS)
def test_pipelines_train_on_gpu_workers_and_score_on_autoscaling_cpu(bundle, target):
    jobs = resolve(bundle, target)["resources"]["jobs"]
    for name in ("incidents_pipeline", "images_pipeline"):
        job = jobs[name]
        tasks = {t["task_key"]: t for t in job["tasks"]}
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        assert [d["task_key"] for d in tasks["train"]["depends_on"]] == ["ingest"]
        assert [d["task_key"] for d in tasks["score"]["depends_on"]] == ["train"]
        train = clusters[tasks["train"]["job_cluster_key"]]
        assert train["spark_version"] == "16.4.x-gpu-ml-scala2.12"
        assert train["node_type_id"] == "g4dn.xlarge"
        assert train["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
        params = tasks["train"]["python_wheel_task"]["parameters"]
        # one barrier task per GPU node: as many tf.distribute workers as nodes
        assert int(params[params.index("--workers") + 1]) == train["num_workers"] == 2
        score = clusters[tasks["score"]["job_cluster_key"]]
        assert score["spark_version"] == "16.4.x-cpu-ml-scala2.12"
        assert score["autoscale"] == {"min_workers": 1, "max_workers": 8}
        for t in tasks.values():
            assert t["libraries"] == [{"whl": "../dist/*.whl"}]


def test_daily_scoring_is_paused_in_dev_and_runs_in_prod(bundle):
    dev = resolve(bundle, "dev")["resources"]["jobs"]["score_incidents_daily"]
    prod = resolve(bundle, "prod")["resources"]["jobs"]["score_incidents_daily"]
    assert dev["schedule"]["pause_status"] == "PAUSED"
    assert prod["schedule"]["pause_status"] == "UNPAUSED"
    assert Job.from_dict(prod).schedule.quartz_cron_expression == "0 0 6 * * ?"
    ingest, score = prod["tasks"]
    # the day is the batch: a rerun replaces that day's rows, and only that day is scored
    p = ingest["python_wheel_task"]["parameters"]
    assert p[p.index("--source") + 1] == \
        "/Volumes/main/sparkeras/landing/incidents/{{job.trigger.time.iso_date}}"
    assert p[p.index("--batch-id") + 1] == "{{job.trigger.time.iso_date}}"
    s = score["python_wheel_task"]["parameters"]
    assert s[s.index("--input-batch") + 1] == "{{job.trigger.time.iso_date}}"


@pytest.mark.parametrize("target", TARGETS)
def test_daily_scoring_runs_on_serverless_with_the_wheel_and_tensorflow(bundle, target):
    job = resolve(bundle, target)["resources"]["jobs"]["score_incidents_daily"]
    typed = Job.from_dict(job)
    (env,) = typed.environments
    assert env.spec.environment_version == "4"
    assert env.spec.dependencies[0] == "../dist/*.whl"
    assert any(d.startswith("tensorflow-cpu") for d in env.spec.dependencies)
    assert "job_clusters" not in job
    for task in job["tasks"]:          # serverless: no cluster, no libraries, the environment
        assert task["environment_key"] == env.environment_key
        assert not ({"job_cluster_key", "existing_cluster_id", "libraries"} & set(task))


def test_resolution_follows_the_cli_rules(bundle):
    doc = resolve(bundle, "prod", user="ana@example.com")
    job = doc["resources"]["jobs"]["incidents_pipeline"]
    ingest = job["tasks"][0]["python_wheel_task"]["parameters"]
    assert ingest[ingest.index("--source") + 1] == "/Volumes/main/sparkeras/raw/incidents/"
    assert job["job_clusters"][1]["new_cluster"]["num_workers"] == 2      # keeps its type
    assert doc["workspace"]["root_path"] == "/Workspace/Users/ana@example.com/.bundle/sparkeras/prod"
    assert dynamic_sample("{{job.trigger.time.iso_date}}/x") == "2026-11-21/x"


@pytest.mark.parametrize("target", TARGETS)
def test_the_endpoint_serves_the_model_the_pipeline_registers(bundle, wheel_entry_points,
                                                              target):
    calls = []
    doc = _check(bundle, target, wheel_entry_points, calls)
    (endpoint,) = doc["resources"]["model_serving_endpoints"].values()
    typed = ModelServingEndpoint.from_dict(endpoint)
    (entity,) = typed.config.served_entities
    trained = {cfg.registry.incident_model for where, argv, args, cfg in calls
               if args.command == "train" and args.workload == "incidents"}
    assert trained == {entity.entity_name}
    assert entity.entity_version == "1" and entity.scale_to_zero_enabled
    assert typed.name == f"sparkeras-incident-root-cause-{target}"


def _endpoint(doc):
    return doc["resources"]["model_serving_endpoints"]["incident_root_cause"]["config"]


def _mutated(bundle, change):
    broken = copy.deepcopy(bundle)
    change(broken.document)
    return broken


def _daily(doc):
    return doc["resources"]["jobs"]["score_incidents_daily"]


def _task(doc, job="incidents_pipeline", key="train"):
    return next(t for t in doc["resources"]["jobs"][job]["tasks"] if t["task_key"] == key)


BREAKAGES = {
    "unknown field": (lambda d: _task(d).update(python_wheel_tsk={}), "Unexpected field"),
    "wrong enum": (lambda d: d["targets"]["dev"].setdefault("variables", {}).update(
        daily_pause_status="MAYBE"), "not a valid PauseStatus"),
    "undeclared variable": (lambda d: _task(d)["python_wheel_task"]["parameters"].append(
        "${var.nope}"), r"unknown reference \$\{var.nope\}"),
    "unknown dependency": (lambda d: _task(d, key="score").update(
        depends_on=[{"task_key": "trian"}]), "depends on unknown task 'trian'"),
    "cycle": (lambda d: _task(d, key="ingest").update(depends_on=[{"task_key": "score"}]),
              "in a cycle"),
    "undefined cluster": (lambda d: _task(d).update(job_cluster_key="gpu"),
                          "undefined job_cluster_key 'gpu'"),
    "bad entry point": (lambda d: _task(d)["python_wheel_task"].update(entry_point="main"),
                        "no entry point 'main'"),
    "wheel path": (lambda d: _task(d).update(libraries=[{"whl": "./dist/*.whl"}]),
                   "not where the bundle's wheel artifact is built"),
    "serverless wheel": (lambda d: _daily(d)["environments"][0]["spec"].update(
        dependencies=["tensorflow-cpu"]), "the bundle's wheel is not among its dependencies"),
    "serverless key": (lambda d: _task(d, "score_incidents_daily", "score").update(
        environment_key="sparkras"), "environment_key 'sparkras' is not one of"),
    "two computes": (lambda d: _task(d, "score_incidents_daily", "score").update(
        job_cluster_key="cpu"), "needs exactly one of"),
    "cli rejects": (lambda d: _task(d)["python_wheel_task"]["parameters"].extend(
        ["--epochs", "many"]), "invalid int value: 'many'"),
    "config rejects": (lambda d: _task(d)["python_wheel_task"]["parameters"].extend(
        ["--set", "train.epochs=0"]), "'train.epochs' must be at least 1"),
    "missing conf": (lambda d: _task(d)["python_wheel_task"].__setitem__("parameters", [
        "--conf", "${workspace.file_path}/conf/${bundle.target}-typo.yml", "train", "incidents",
        "--table", "t"]), "config file not found"),
    "endpoint field": (lambda d: _endpoint(d)["served_entities"][0].update(entity_versoin="1"),
                       "Unexpected field 'entity_versoin'"),
    "endpoint alias": (lambda d: _endpoint(d)["served_entities"][0].update(
        entity_version="champion"), "cannot follow an alias"),
    "endpoint route": (lambda d: _endpoint(d)["traffic_config"]["routes"][0].update(
        served_model_name="champoin"), "unknown served entities"),
    "dynamic reference": (lambda d: _task(d, key="score")["python_wheel_task"]["parameters"]
                          .extend(["--batch-id", "{{job.start_time.iso_dat}}"]),
                          "unknown time argument 'iso_dat'"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_the_check_catches_a_broken_bundle(bundle, wheel_entry_points, name):
    change, message = BREAKAGES[name]
    _check(bundle, "dev", wheel_entry_points)           # the real bundle passes
    with pytest.raises(BundleError, match=message):
        _check(_mutated(bundle, change), "dev", wheel_entry_points)
