"""Ecosystem basics: the package installs and runs as `iosweep`, --help explains the knobs, the
MLflow experiment opens on runs with only the params that apply, and the dependencies are pinned."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from conftest import ROOT, mlflow_runs, run_cli
from runner import app, helptext, schema, tracking
from workloads import Spec, run
from workloads.sampler import system_sample
from workloads.metrics import t95

schema.register()
app.register_resolvers()


def compose_point(overrides: list[str]):
    """(cfg without the hydra node, the runtime choices) as run_point sees them."""
    with initialize_config_dir(config_dir=str(schema.CONF), version_base="1.3"):
        full = compose("config", overrides=app.quote_null_choices(overrides), return_hydra_config=True)
    choices = OmegaConf.to_container(full.hydra.runtime.choices)
    with open_dict(full):
        del full["hydra"]
    return full, choices


class _Hydra:  # the part of HydraConfig that params_of reads
    def __init__(self, choices):
        self.runtime = type("Runtime", (), {"choices": choices})()


def params(overrides: list[str]) -> dict[str, str]:
    cfg, choices = compose_point(overrides)
    return app.params_of(cfg, _Hydra(choices))


# ---- pip install . / the iosweep console script / --help -------------------------------------

@pytest.mark.slow
def test_wheel_installs_and_runs_as_iosweep_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # build from a copy: the build writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "outputs", "build", "*.egg-info", "*.so",
                                                             "__pycache__", ".pytest_cache", ".hypothesis"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("MLFLOW_", "IOSWEEP_"))}

    def sh(*cmd, cwd=tmp_path, **kw):
        p = subprocess.run(cmd, cwd=cwd, env={**env, **kw}, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
        return p

    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheels"), str(src))
    [wheel] = (tmp_path / "wheels").glob("iosweep-*.whl")
    sh(sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv"))
    sh(str(tmp_path / "venv/bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel))
    work = tmp_path / "work"
    work.mkdir()
    # what the iosweep script imports (no PYTHONPATH): the wheel's copy, not the editable checkout
    where = sh(str(tmp_path / "venv/bin/python"), "-c", "import runner.schema as s, workloads as w; "
               "print(s.__file__, s.CONF, w.__file__)", cwd=work).stdout.split()
    assert all(w.startswith(str(tmp_path / "venv")) for w in where), where

    iosweep = str(tmp_path / "venv/bin/iosweep")
    p = sh(iosweep, "engine=null", "block_kb=4", "size_mb=8", cwd=work)
    _, runs = mlflow_runs(work)
    assert [r.info.status for r in runs] == ["FINISHED"], p.stdout
    assert len(list((work / "outputs/runs").rglob("iosweep.log"))) == 1  # hydra.job.name names the log

    text = sh(iosweep, "--help", cwd=work).stdout
    assert "engine: fio, mmap, null, sync, uring" in text and "pattern: append, format_read, metadata, mixed, model_load, rand_read" in text
    assert re.search(r"block_kb=1024 +size of every I/O", text) and "data.dedup_ratio=" in text
    script = sh(iosweep, "--shell-completion", "install=bash", cwd=work).stdout
    assert "complete -o nospace -o default -F hydra_bash_completion iosweep" in script
    words = sh(iosweep, "-sc", "query=bash", cwd=work, COMP_LINE="iosweep engine=", COMP_POINT="15").stdout.split()
    assert words == ["engine=fio", "engine=mmap", "engine=null", "engine=sync", "engine=uring"]


def test_help_gives_every_knob_and_group_key_a_meaning():
    text = helptext.knob_help()
    lines = {m[1]: m[2] for m in re.finditer(r"^  ([\w.]+)=\S*\s+(.*)$", text, re.M)}
    keys = tracking.flatten(OmegaConf.to_container(OmegaConf.structured(schema.IosweepConfig)))
    for key in [*(k for k in keys if not k.endswith(".name")), *schema.GROUPS]:
        assert lines.get(key, "").strip(), f"{key} has no meaning in --help (comment it in conf/)"


def test_job_name_and_help_template_are_the_apps():
    with initialize_config_dir(config_dir=str(schema.CONF), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.job.name == "iosweep" and cfg.hydra.help.app_name == "iosweep"
    assert "$APP_CONFIG_GROUPS" in cfg.hydra.help.template and "block_kb=1024" in cfg.hydra.help.template


# ---- MLflow first impression -----------------------------------------------------------------

@pytest.mark.parametrize("overrides, present, absent", [
    ([], {"engine": "sync", "pattern": "seq_write", "target": "local", "data": "dgen", "end_fsync": "True"},
     ["pattern.read_pct", "engine.name", "pattern.name", "target.name", "data.name", "engine.ioengine",
      "duration_s", "target.path", "target.allow_overwrite", "direct_fallback", "point", "experiment"]),
    (["pattern=mixed", "direct=true", "duration_s=2"], {"pattern.read_pct": "70", "direct_fallback": "False",
                                                        "duration_s": "2"}, []),
    (["engine=fio"], {"engine": "fio", "engine.ioengine": "psync"}, ["engine.name"]),
    (["data=zeros", "pattern=seq_read"], {"data": "zeros"}, ["data.compress_ratio", "data.dedup_ratio", "end_fsync"]),
    (["target=device", "target.path=/tmp/x"], {"target.path": "/tmp/x", "target.allow_overwrite": "False"},
     ["target.dir"]),
    (["point=rand_read_4k_warm"], {"point": "rand_read_4k_warm", "pattern": "rand_read"}, ["pattern.read_pct"]),
])
def test_params_hold_only_what_applies_once_and_no_nulls(overrides, present, absent):
    p = params(overrides)
    assert present.items() <= p.items() and not set(absent) & set(p)
    assert "null" not in p.values()


def test_engine_null_is_a_choice_not_a_missing_value():
    assert params(["engine=null"])["engine"] == "null"


def test_existing_experiment_gets_the_kind_that_opens_on_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    old = c.create_experiment(tracking.EXPERIMENT)  # as an older iosweep made it
    assert tracking.experiment_id(c) == old
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_system_series_carry_mlflow_own_names():
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    mlflow_names = set()
    for monitor in (CPUMonitor(), DiskMonitor(), NetworkMonitor()):
        monitor.collect_metrics()
        mlflow_names |= set(monitor.metrics)
    import psutil

    ours = system_sample(psutil.net_io_counters())
    assert set(ours) == mlflow_names
    assert all(app.STEP_METRICS[k] == f"system/{k}" for k in ours)


def test_run_shorter_than_one_interval_still_gets_a_sample(tmp_path):
    r = run(Spec(engine="null", block_size=4096, size_bytes=8 << 20, log_interval_s=60, target_dir=str(tmp_path)))
    assert len(r.timeseries) == 1 and r.timeseries[0]["iops"] > 0
    assert 0 <= r.timeseries[0]["cpu_utilization_percentage"] <= 100


@pytest.mark.slow
def test_store_opens_on_runs_and_the_sweep_parent_explains_itself(tmp_path):
    p = run_cli(tmp_path, "-m", "block_kb=64,256", "size_mb=8", "log_interval_s=30")
    assert p.returncode == 0, p.stderr
    client, runs = mlflow_runs(tmp_path)
    exp = client.get_experiment_by_name("iosweep")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    [parent] = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    for child in children:  # seq_write points, each shorter than one log interval
        ps = child.data.params
        assert "pattern.read_pct" not in ps and "engine.name" not in ps and ps["engine"] == "sync"
        assert "null" not in ps.values()
        assert len(client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")) >= 1
    shared = {k: v for k, v in children[0].data.params.items() if children[1].data.params.get(k) == v}
    assert parent.data.params == shared and "block_kb" not in shared and shared["size_mb"] == "8"
    note = parent.data.tags["mlflow.note.content"]
    printed = [line.strip()[2:] for line in p.stdout.splitlines() if line.startswith("  * ")]
    assert printed and all(f"- {n}" in note for n in printed)
    assert "Best" in note


# ---- dependencies ----------------------------------------------------------------------------

@pytest.mark.parametrize("df, value", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (20, 2.086), (30, 2.042),
                                       (21, 2.080), (200, 1.972)])
def test_t95_is_students_t(df, value):
    assert round(t95(df), 3) == value  # 21 and 200 fell between the old table's rows (2.086, 1.980)


def test_dependencies_pin_dgen_below_its_next_minor_and_name_scipy():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    dgen = next(d for d in deps if d.startswith("dgen-py"))
    assert "<0.4" in dgen and any(d.startswith("scipy") for d in deps)
