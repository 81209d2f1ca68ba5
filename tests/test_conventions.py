"""What a Python maintainer expects of the package: help, version, `python -m`, exit codes by
error type, a bounded model cache, quiet native start-up output."""
import argparse
import os
import subprocess
import sys

import pytest

import sparkeras
from sparkeras import cli, errors, logs
from sparkeras.config import ConfigError
from sparkeras.scoring import ModelCache


def _parsers(parser, path=("sparkeras",)):
    """Every (command path, parser) of the CLI, the subcommands' included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_and_option_has_help_without_markup():
    for path, parser in _parsers(cli.build_parser()):
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text, path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), path
            elif action.help is not argparse.SUPPRESS:
                assert action.help, (path, action.dest)


def test_python_dash_m_help_and_version():
    run = [sys.executable, "-m", "sparkeras"]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"sparkeras {sparkeras.__version__}"
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "ingest", "train", "score", "sql", "demo"):
        assert command in helped.stdout
    assert "Exit codes:" in helped.stdout


@pytest.mark.parametrize("exc, code, kind", [
    (ConfigError("conf/x.yml: unknown key 'train.epoch'"), 2, "configuration error"),
    (errors.NotEnoughSlots("train.workers=3 needs 3 task slots"), 1, "error"),
    (errors.TrainingFailed("training failed in all 3 attempts"), 1, "error"),
    (errors.ReconciliationError("3 input rows but 2 scored"), 3, "error"),
    (errors.InputNotFound("no input files match x"), 1, "error"),
    (errors.DataError("table t lacks the columns ['image']"), 1, "error"),
    (errors.UsageError("809 training rows per worker are fewer than one batch of 1024"), 2,
     "error"),
    (ValueError("a bug: a library's ValueError"), 4, "internal error"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (ZeroDivisionError("division by zero"), 4, "internal error"),
])
def test_errors_map_to_exit_codes_by_type(exc, code, kind):
    assert cli.classify(exc)[:2] == (code, kind)


def test_an_error_inside_a_spark_task_is_named_by_its_last_error_line():
    exc = RuntimeError("An exception was thrown from the Python worker:\nTraceback (most recent "
                       "call last):\n  File \"x.py\", line 1\nKeyError: 'CPU_LOAD'\n\tat org.x")
    assert cli.classify(exc) == (4, "internal error", "KeyError: 'CPU_LOAD'")


def test_a_user_error_from_spark_is_one_line_with_exit_code_1(spark, tmp_path, capsys):
    code = cli.main(["--set", f"state_dir={tmp_path}", "sql", "SELECT * FROM no_such_table"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("sparkeras: error: [TABLE_OR_VIEW_NOT_FOUND]")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    (log_file,) = (tmp_path / "logs").glob("sparkeras-sql-*.log")
    assert "Traceback" in log_file.read_text()          # the full trace went to the log file
    assert spark.range(3).count() == 3                  # the caller's session is still its own


def test_a_configuration_error_exits_2_before_anything_runs(capsys):
    assert cli.main(["--set", "train.epoch=3", "sql", "SELECT 1"]) == 2
    assert capsys.readouterr().err == (
        "sparkeras: configuration error: --set train.epoch=3: unknown key 'train.epoch' "
        "(did you mean 'train.epochs'?)\n")


def test_the_model_cache_keeps_the_three_most_recently_used():
    loads = []

    def loader(name):
        def load():
            loads.append(name)
            return name.upper()
        return load
    ModelCache._models.clear()
    for name in ("v1", "v2", "v3", "v1", "v4"):       # v1 used again: v2 is the oldest
        assert ModelCache.get(("test", name), loader(name)) == name.upper()
    assert list(ModelCache._models) == [("test", "v3"), ("test", "v1"), ("test", "v4")]
    ModelCache.get(("test", "v2"), loader("v2"))
    assert loads == ["v1", "v2", "v3", "v4", "v2"]
    ModelCache._models.clear()


def test_native_startup_output_is_held_and_replayed_only_on_failure(capfd):
    with logs.quiet_stderr():
        os.write(2, b"oneDNN custom operations are on\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(ImportError):
        with logs.quiet_stderr():
            os.write(2, b"libfoo.so: cannot open shared object file\n")
            raise ImportError("no module")
    assert "libfoo.so" in capfd.readouterr().err


def test_child_processes_write_their_output_to_the_log_file(tmp_path, capfd):
    path = tmp_path / "run.log"
    with logs.output_to(path):
        subprocess.run([sys.executable, "-c", "import sys; sys.stdout.write('a JVM report\\n'); "
                        "sys.stdout.flush(); sys.stderr.write('from the JVM\\n')"], check=True)
    print("back on the terminal", file=sys.stderr)
    print("the product")
    assert path.read_text() == "a JVM report\nfrom the JVM\n"
    assert capfd.readouterr() == ("the product\n", "back on the terminal\n")
