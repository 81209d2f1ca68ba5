"""Serving and seeing: the registered pyfunc over real HTTP servers on 127.0.0.1 (started
by the tests, stopped by pid), MLflow's spark_udf, and the MLflow UI as a browser uses it."""
import base64
import copy
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pyspark.sql import functions as F

from sparkeras.ingest import ingest_images
from sparkeras.mlflow_servers import group_members
from sparkeras.processes import alive
from sparkeras.scoring import score_images, score_incidents
from sparkeras.train import train_images, train_incidents
from sparkeras.workloads import image_synth, incidents

pytestmark = pytest.mark.slow   # processes, training, servers

MODEL = "serving_incidents"
IMAGE_MODEL = "serving_images"
PROBABILITIES = [f"probability_{c}" for c in incidents.LABELS]


@pytest.fixture(scope="module")
def serving_cfg(cfg):
    c = copy.deepcopy(cfg)
    c.registry.incident_model = MODEL
    c.registry.image_model = IMAGE_MODEL
    c.train.epochs = 2
    return c


@pytest.fixture(scope="module")
def incident_scores(spark, serving_cfg, incident_table):
    table = incident_table("serve_incidents", 4000, seed=5)
    trained = train_incidents(spark, serving_cfg, table)
    result = score_incidents(spark, serving_cfg, table, "serve_incident_scores")
    assert result.scored_rows == 4000
    rows = (spark.table(table).join(spark.table("serve_incident_scores"), "ID")
            .orderBy("ID").limit(40).toPandas())
    return trained, rows


@pytest.fixture(scope="module")
def image_scores(spark, serving_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_idx")
    image_synth.generate(spark, 600, str(out), "idx", seed=4, n_classes=3)
    ingest_images(spark, serving_cfg, str(out), "serve_digits", "idx", size=(28, 28, 1))
    trained = train_images(spark, serving_cfg, "serve_digits")
    score_images(spark, serving_cfg, "serve_digits", "serve_digit_scores")
    rows = (spark.table("serve_digits").join(spark.table("serve_digit_scores"), "image_id")
            .orderBy("image_id").limit(8).toPandas())
    return trained, rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server command in a new process; its first stdout line is its JSON summary."""

    def __init__(self, argv, env=None, ready=None, timeout=240):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True)
        self.summary = None
        deadline = time.monotonic() + timeout
        if ready is None:                       # sparkeras: the JSON line says it is ready
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"{argv} ended ({self.proc.wait()}): "
                                     f"{self.proc.stderr.read()[-3000:]}")
            self.summary = json.loads(line)
        else:                                   # plain mlflow: poll the URL
            while not _get_ok(ready):
                assert self.proc.poll() is None, self.proc.stderr.read()[-3000:]
                assert time.monotonic() < deadline, f"{ready} did not answer"
                time.sleep(0.5)

    def stop(self, sig=signal.SIGINT) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _get_ok(url) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def post(url, body) -> tuple[int, dict]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def sparkeras(write_conf, *args):
    return [sys.executable, "-m", "sparkeras.cli", "--conf", write_conf(
        f"registry.incident_model={MODEL}", f"registry.image_model={IMAGE_MODEL}"), *args]


def test_the_pyfunc_takes_named_columns_and_returns_the_scored_columns(incident_scores):
    import mlflow
    trained, rows = incident_scores
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == incidents.FEATURES
    answer = model.predict(rows[incidents.FEATURES].astype("float64"))
    assert list(answer.columns) == ["predicted_root_cause", "confidence", *PROBABILITIES]
    assert list(answer.predicted_root_cause) == list(rows.predicted_root_cause)
    np.testing.assert_allclose(answer[PROBABILITIES].to_numpy(),
                               rows[PROBABILITIES].to_numpy(), atol=1e-6)
    assert model.metadata.metadata["labels"] == incidents.LABELS


def test_spark_udf_sees_the_same_named_columns(spark, incident_scores):
    import mlflow
    trained, rows = incident_scores
    result = ", ".join(["predicted_root_cause string", "confidence double"] +
                       [f"{p} double" for p in PROBABILITIES])
    udf = mlflow.pyfunc.spark_udf(spark, f"models:/{MODEL}/{trained['model_version']}",
                                  result_type=result, env_manager="local")
    ids = [int(i) for i in rows.ID]
    out = (spark.table("serve_incidents").where(F.col("ID").isin(ids))
           .select("ID", udf(F.struct(*[F.col(c).cast("double").alias(c)
                                      for c in incidents.FEATURES]))
                   .alias("p")).select("ID", "p.*").orderBy("ID").toPandas())
    assert list(out.predicted_root_cause) == list(rows.predicted_root_cause)
    np.testing.assert_allclose(out[PROBABILITIES].to_numpy(), rows[PROBABILITIES].to_numpy(),
                               atol=1e-6)


def test_serve_answers_like_score_and_refuses_bad_requests_readably(incident_scores,
                                                                    write_conf):
    trained, rows = incident_scores
    port = free_port()
    server = Server(sparkeras(write_conf, "serve", "--model", f"models:/{MODEL}@champion",
                              "--port", str(port)))
    try:
        s = server.summary
        assert s["url"] == f"http://127.0.0.1:{port}"
        assert s["model_uri"] == f"models:/{MODEL}/{trained['model_version']}"
        assert _get_ok(f"{s['url']}/ping")
        records = rows[incidents.FEATURES].astype(int).to_dict("records")
        code, body = post(s["invocations"], {"dataframe_records": records})
        assert code == 200, body
        answer = pd.DataFrame(body["predictions"])
        assert list(answer.columns) == ["predicted_root_cause", "confidence", *PROBABILITIES]
        assert list(answer.predicted_root_cause) == list(rows.predicted_root_cause)
        np.testing.assert_allclose(answer[PROBABILITIES].to_numpy(),
                                   rows[PROBABILITIES].to_numpy(), atol=1e-6)

        good = dict(zip(incidents.FEATURES, [1, 0, 0, 1, 0, 0, 0]))
        missing = {k: v for k, v in good.items() if k != "DELAY"}
        code, body = post(s["invocations"], {"dataframe_records": [missing]})
        assert code == 400 and "DELAY" in body["message"], body
        code, body = post(s["invocations"], {"dataframe_records": [{**good, "CPU_LOAD": "high"}]})
        assert code == 400 and "CPU_LOAD" in body["message"], body
        code, body = post(s["invocations"], {"dataframe_records": [
            good, {**good, "CPU_LOAD": 7}, {**good, "DELAY": 1.5}]})
        assert code == 400, body
        # MLflow prefixes the request's data; our reason ends the message
        assert body["message"].endswith(
            "Error: 2 of 3 rows cannot be scored: row 1: CPU_LOAD must be 0 or 1, got 7; "
            "row 2: DELAY must be 0 or 1, got 1.5"), body
        code, body = post(s["invocations"], {"dataframe_split": {
            "columns": list(good), "data": [list(good.values())]}})
        assert code == 200 and len(body["predictions"]) == 1     # still serving
    finally:
        assert server.stop(signal.SIGINT) == 0
    assert not alive(server.summary["pid"]) and not group_members(server.summary["pid"])
    assert "the model server stopped" in server.proc.stderr.read()


def test_plain_mlflow_serves_an_image_model_from_base64_images(image_scores, cfg):
    """`mlflow models serve ... --env-manager local` on the registered image model: encoded
    images of any size, or raw pixels, answer as `sparkeras score` scored them."""
    trained, rows = image_scores
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    server = Server([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                     f"models:/{IMAGE_MODEL}@champion", "--env-manager", "local",
                     "-p", str(port), "-h", "127.0.0.1", "-w", "1"], env=env,
                    ready=f"http://127.0.0.1:{port}/ping")
    url = f"http://127.0.0.1:{port}/invocations"

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def png(raw: bytes, size=None) -> bytes:
        img = Image.fromarray(np.frombuffer(raw, np.uint8).reshape(28, 28), "L")
        buf = io.BytesIO()
        (img.resize(size, Image.Resampling.NEAREST) if size else img).save(buf, "PNG")
        return buf.getvalue()
    try:
        raw = [bytes(b) for b in rows.image]
        for payloads in ([b64(r) for r in raw], [b64(png(r)) for r in raw]):
            code, body = post(url, {"dataframe_records": [{"image": p} for p in payloads]})
            assert code == 200, body
            answer = pd.DataFrame(body["predictions"])
            assert list(answer.columns) == [
                "predicted_label", "confidence", "top_1_label", "top_1_probability",
                "top_2_label", "top_2_probability", "top_3_label", "top_3_probability"]
            assert list(answer.predicted_label) == list(rows.predicted_label)
            np.testing.assert_allclose(answer.top_1_probability, rows.top_1_probability,
                                       atol=1e-6)
        # a photo of another size is resized as ingest does: an answer, not an error
        code, body = post(url, {"dataframe_records": [{"image": b64(png(raw[0], (60, 45)))}]})
        assert code == 200 and body["predictions"][0]["predicted_label"] in trained["labels"]
        code, body = post(url, {"dataframe_records": [{"image": b64(b"not an image")},
                                                      {"image": b64(png(raw[0]))}]})
        assert code == 400, body
        assert re.search(r"Error: 1 of 2 rows cannot be scored: row 0: image: not an image",
                         body["message"]), body
        code, body = post(url, {"dataframe_records": [{"image": b64(png(raw[1]))}]})
        assert code == 200 and body["predictions"][0]["predicted_label"] == \
            rows.predicted_label[1]
    finally:
        server.stop(signal.SIGTERM)
        if group_members(server.proc.pid):
            os.killpg(server.proc.pid, signal.SIGKILL)


def test_the_ui_serves_the_run_page_and_its_plots(incident_scores, write_conf):
    trained, _ = incident_scores
    port = free_port()
    server = Server(sparkeras(write_conf, "ui", "--port", str(port)))
    try:
        url = server.summary["url"]
        assert url == f"http://127.0.0.1:{port}"
        assert any(name == "sparkeras-incidents" for name in server.summary["experiments"])
        # what a browser fetches for a run's page: the app, its script, the run, the PNGs
        with urllib.request.urlopen(f"{url}/", timeout=30) as r:
            page = r.read().decode()
        assert r.status == 200 and '<div id="root"' in page
        script = re.search(r'src="\.?/?(static-files/[^"]+\.js)"', page).group(1)
        with urllib.request.urlopen(f"{url}/{script}", timeout=30) as r:
            assert r.status == 200 and len(r.read()) > 10_000
        with urllib.request.urlopen(
                f"{url}/ajax-api/2.0/mlflow/runs/get?run_id={trained['run_id']}") as r:
            run = json.loads(r.read())["run"]
        assert run["info"]["status"] == "FINISHED"
        assert any(m["key"] == "test_macro_f1" for m in run["data"]["metrics"])
        for png in ("confusion_matrix.png", "training_curves.png"):
            with urllib.request.urlopen(f"{url}/get-artifact?path=evaluation/{png}&run_uuid="
                                        f"{trained['run_id']}", timeout=30) as r:
                assert r.read(8) == b"\x89PNG\r\n\x1a\n", png
    finally:
        assert server.stop(signal.SIGTERM) == 0
    assert not alive(server.summary["pid"]) and not group_members(server.summary["pid"])


def test_serve_refuses_a_port_in_use_at_once(write_conf):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = subprocess.run(sparkeras(write_conf, "serve", "--model", f"models:/{MODEL}/1",
                                        "--port", str(busy.getsockname()[1])),
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "another process holds it; choose another with --port" in proc.stderr
