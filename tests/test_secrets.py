"""Credentials never leave iosweep: runner.secrets masks them at every exit, fast, and reproduce
asks for a masked value again instead of running with the mask."""
import json
import sys
import time
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import mlflow_runs, run_cli
from runner import secrets
from runner.secrets import MASK


@pytest.fixture(autouse=True)
def _no_remembered_values():
    secrets.forget_all()
    yield
    secrets.forget_all()


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from runner import app, schema

    schema.register()
    app.register_resolvers()
    with initialize_config_dir(config_dir=str(schema.CONF), version_base="1.3"):
        return hydra_compose("config", overrides=app.quote_null_choices(overrides))


# ---- which keys are credentials ------------------------------------------------------------

@pytest.mark.parametrize("key", ["+db_pass", "+auth", "++target.password", "~api_key", "x.passwd", "pwd",
                                 "AWS_SECRET_ACCESS_KEY", "sessionToken", "session_token", "private-key",
                                 "credentials", "target.secret", "hydra.job.env_set.DB_PASSWORD", "dbpassword"])
def test_credential_keys(key):
    assert secrets.is_secret(key)


def test_no_knob_of_iosweep_looks_like_a_credential():
    from runner.preflight import known_keys

    knobs = known_keys() + ["bypass", "author", "passes", "keyboard", "objective"]
    # target=s3's credentials are the only knobs that are credentials, and masked as such
    assert sorted(k for k in knobs if secrets.is_secret(k)) == ["target.access_key_id", "target.secret_access_key"]


# ---- masking by key --------------------------------------------------------------------------

@pytest.mark.parametrize("text, masked", [
    # a swept value: every element (the old mask stopped at the first comma)
    ("-m target.password=a,b block_kb=4", f"-m target.password={MASK},{MASK} block_kb=4"),
    ("-m target.password=a1,b2,c3", f"-m target.password={MASK},{MASK},{MASK}"),
    # a quoted value holding a comma and a space
    ("target.password='a b,c' block_kb=4", f"target.password={MASK} block_kb=4"),
    # keys the old pattern missed
    ("+db_pass=hunter2 +auth=zz", f"+db_pass={MASK} +auth={MASK}"),
    # Hydra's override_dirname: the next key after a comma is not part of the value
    ("+db_pass=hunter2,block_kb=4", f"+db_pass={MASK},block_kb=4"),
    # a Python list in an error line
    ("overrides: ['+auth=zz', 'x=1']", f"overrides: ['+auth={MASK}', 'x=1']"),
    ("sqlite://h/db?token=abc&x=1 next", f"sqlite://h/db?token={MASK} next"),
    ("password: foo\n  - +api_key=abc\nblock_kb: 4", f"password: {MASK}\n  - +api_key={MASK}\nblock_kb: 4"),
    ("  \"secret_key\": \"x y\"", f"  \"secret_key\": {MASK}"),
    ("block_kb=4 writers=2 engine=null", "block_kb=4 writers=2 engine=null"),
])
def test_mask_text_by_key(text, masked):
    assert secrets.mask_text(text) == masked


# ---- masking by value: wherever a credential appears ---------------------------------------

def test_values_from_the_command_line_are_masked_anywhere():
    secrets.remember_overrides(["-m", "+db_pass=hunter2xyz", "target.password=s3cr3t,0ther",
                                "+x.token='q,w e'", "block_kb=4,64"])
    text = ("| s3cr3t | 1.0 |\nBest at target.password=0ther\ntrial: hunter2xyz\nname q,w e\n"
            "run seq_write 4k x1 sync hunter2xyz")
    out = secrets.mask_text(text)
    assert not any(s in out for s in ("hunter2xyz", "s3cr3t", "0ther", "q,w e")), out
    assert "| 1.0 |" in out and "4k x1" in out  # everything else as it was
    assert secrets.mask_text("block_kb=4,64") == "block_kb=4,64"


def test_short_and_boolean_values_are_masked_by_key_only():
    secrets.remember_overrides(["+token=1", "+password=true"])
    assert secrets.mask_text("block 1 KiB, direct true") == "block 1 KiB, direct true"
    assert secrets.mask_text("+token=1") == f"+token={MASK}"


@pytest.mark.parametrize("overrides, env", [
    (["+password=hunter2xyz", "trial=${password}"], {}),  # the value arrives under a harmless key
    (["trial=${oc.env:DB_TOKEN}"], {"DB_TOKEN": "hunter2xyz"}),
    (["+target.api_key=hunter2xyz", "target.dir=/tmp/${target.api_key}"], {}),
])
def test_values_reached_by_interpolation_are_masked(overrides, env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = compose(overrides)
    secrets.remember_config(cfg)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    assert "hunter2xyz" in resolved
    assert "hunter2xyz" not in secrets.mask_text(resolved)
    params = {k: str(v) for k, v in OmegaConf.to_container(cfg, resolve=True).items() if not isinstance(v, dict)}
    assert "hunter2xyz" not in json.dumps(secrets.mask_mapping(params))


@pytest.mark.parametrize("override", ["trial=${oc.env:DB_PASSWORD}",
                                      r"trial=$\{oc.env\:DB_PASSWORD\}"])  # as Hydra saves a sweep job's
def test_params_and_overrides_teach_a_new_process(override):
    """runner.sync publishes a run dir in a process that never saw the command line."""
    params = {"trial": "hunter2xyz", "block_kb": "4", "target.password": "s3cr3t"}
    secrets.remember_params(params, [override])
    masked = secrets.mask_text("config: trial=hunter2xyz block_kb=4 target dir s3cr3t")
    assert "hunter2xyz" not in masked and "s3cr3t" not in masked and "block_kb=4" in masked


def test_publish_masks_params_tags_run_name_and_artifacts(tmp_path, monkeypatch):
    """What runner.sync does with a run dir, in a process that learnt nothing before."""
    from runner import tracking

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = ["engine=null", "+db_pass=hunter2xyz", "trial=${oc.env:API_TOKEN}"]
    (run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    (run_dir / "config.yaml").write_text("db_pass: hunter2xyz\ntrial: envTok4567\nblock_kb: 4\n")
    (run_dir / "result.json").write_text(json.dumps({
        "result_id": uuid.uuid4().hex, "name": "seq_write 4k x1 envTok4567", "status": "FAILED",
        "params": {"db_pass": "hunter2xyz", "trial": "envTok4567", "block_kb": "4"},
        "tags": {"iosweep.overrides": " ".join(overrides), "iosweep.error": "target.dir='/x/envTok4567': no room"},
        "metrics": {}, "overrides": overrides, "error": "no room",
        "artifacts": [["config.yaml", None], [".hydra", ".hydra"], ["result.json", None]]}))
    tracking.publish(run_dir)
    [run] = mlflow_runs(tmp_path)[1]
    assert run.data.params == {"db_pass": MASK, "trial": MASK, "block_kb": "4"}
    assert run.info.run_name == f"seq_write 4k x1 {MASK}"
    assert run.data.tags["iosweep.overrides"] == f"engine=null +db_pass={MASK} trial=${{oc.env:API_TOKEN}}"
    assert _leaks(tmp_path, [], ["hunter2xyz", "envTok4567"]) == []
    assert len(list(tmp_path.glob("outputs/mlartifacts/**/config.yaml"))) == 1


def test_the_mask_reads_back_as_a_plain_string():
    """`***` was a YAML alias: a masked config.yaml could not be loaded again."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    masked_yaml = secrets.mask_text("target:\n  password: hunter2xyz\nblock_kb: 4\n")
    assert OmegaConf.create(masked_yaml).target.password == MASK
    [o] = OverridesParser.create().parse_overrides([secrets.mask_text("+target.password=a1,b2")])
    assert list(o.sweep_string_iterator()) == [MASK, MASK]
    assert compose([secrets.mask_text("+db_pass=hunter2xyz")]).db_pass == MASK
    assert OmegaConf.create(secrets.readable_yaml("password: ***\nb: 1\n")).password == MASK  # logged before


def test_terminal_stream_masks_a_value_written_in_pieces():
    import io

    secrets.remember("hunter2xyz")
    raw = io.StringIO()
    stream = secrets.MaskingStream(raw)
    print("pw", "hunter2", end="", file=stream)
    print("xyz +auth=zz", file=stream)
    stream.write("\rprogress ")
    stream.flush()
    assert raw.getvalue() == f"pw {MASK} +auth={MASK}\n\rprogress "
    assert stream.isatty() is False  # the rest of the stream's interface is the stream's


@pytest.mark.parametrize("size", [30_000, 1_000_000])
def test_masking_is_linear(size):
    """The old pattern backtracked: a 30 KB value took 17 s."""
    value = "a" * size
    secrets.remember("z" * 40)
    texts = [value, f"+password={value}", f"k={value}", f"password: {value}\n", f"+password='{value}",
             f"+password={'ab,' * (size // 3)}", "=" + value, "+~" * (size // 2), f"trial={value} " * 2]
    for text in texts:
        start = time.perf_counter()
        secrets.mask_text(text)
        took = time.perf_counter() - start
        assert took < 1.0, (text[:20], took)


# ---- the sweep summary: files, terminal, plot labels ---------------------------------------

def _job(sweep_dir: Path, num: int, overrides: list[str], mib_s: float) -> None:
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    metrics = {"throughput_mib_s": mib_s, "iops": mib_s, "lat_p50_us": 1.0, "lat_p99_us": 2.0,
               "cpu_util_pct": 5.0, "elapsed_s": 1.0}
    (job / "result.json").write_text(json.dumps({
        "result_id": uuid.uuid4().hex, "name": "seq_write 4k x1 null", "status": "FINISHED", "valid": True,
        "params": {}, "tags": {}, "metrics": metrics, "overrides": overrides, "artifacts": []}))


def test_sweep_summary_masks_swept_credentials(tmp_path, monkeypatch, capsys):
    from runner import summary, tracking

    argv = ["-m", "engine=null", "+target.password=s3cr3t,0ther", "+db_pass=hunter2xyz"]
    secrets.remember_overrides(argv)  # what `python -m runner` does first
    sweep_dir = tmp_path / "sweep"
    _job(sweep_dir, 0, ["engine=null", "+target.password=s3cr3t", "+db_pass=hunter2xyz"], 100.0)
    _job(sweep_dir, 1, ["engine=null", "+target.password=0ther", "+db_pass=hunter2xyz"], 200.0)

    def store_down():
        raise OSError("store down")

    monkeypatch.setattr(tracking, "client", store_down)
    callback = tracking.SweepCallback()
    callback.sweep_dir = sweep_dir
    callback._finish()
    out = capsys.readouterr()
    texts = [out.out, out.err, (sweep_dir / "summary.md").read_text(), (sweep_dir / "summary.csv").read_text()]
    leaks = [t for t in texts if any(s in t for s in ("s3cr3t", "0ther", "hunter2xyz"))]
    assert leaks == []
    assert MASK in texts[2] and MASK in texts[3]
    # the rows every table, finding, best point and plot label is made from
    axes, table = summary.rows(tracking.sweep_points(sweep_dir))
    assert "s3cr3t" not in json.dumps(table) and "0ther" not in json.dumps(table)
    assert " ".join(f"{a}={summary.best_point(table)[a]}" for a in axes) == f"target.password={MASK}"


# ---- reproduce: a masked value is asked for, never run ---------------------------------------

def _logged_run(tmp_path: Path, overrides: list[str], mask: str = MASK) -> Path:
    """A run dir as MLflow holds it: overrides and resolved config with the credentials masked."""
    config = OmegaConf.to_yaml(compose(overrides), resolve=True)
    secrets.remember_overrides(overrides)
    run = tmp_path / "logged"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        secrets.mask_file_text("overrides.yaml", OmegaConf.to_yaml(overrides)).replace(MASK, mask))
    (run / "config.yaml").write_text(secrets.mask_file_text("config.yaml", config).replace(MASK, mask))
    secrets.forget_all()  # reproduce runs in a new process
    return run


def _reproduce(monkeypatch, *argv) -> int:
    from runner import reproduce

    monkeypatch.setattr(sys, "stdout", sys.stdout)  # reproduce wraps the terminal: restored after the test
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    try:
        return reproduce.main(list(argv))
    except SystemExit as e:
        return e.code
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


OVERRIDES = ["engine=null", "block_kb=64", "+db_pass=hunter2xyz", "+target.password=s3cr3t"]


@pytest.mark.parametrize("mask", [MASK, "***"])
def test_reproduce_refuses_to_run_a_masked_value_in_one_line(tmp_path, monkeypatch, capsys, mask):
    monkeypatch.chdir(tmp_path)
    run = _logged_run(tmp_path, OVERRIDES, mask)
    ran = []
    monkeypatch.setattr("runner.reproduce.run_runner", lambda args, origin: ran.append(args) or 0)
    assert _reproduce(monkeypatch, str(run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("iosweep: error: +db_pass, +target.password: masked when logged")
    assert f"--set +db_pass=... --set +target.password=..." in err
    assert ran == []


@pytest.mark.parametrize("mask", [MASK, "***"])
def test_reproduce_dry_run_of_a_masked_run_says_so_and_compares(tmp_path, monkeypatch, capsys, mask):
    monkeypatch.chdir(tmp_path)
    run = _logged_run(tmp_path, OVERRIDES, mask)
    assert _reproduce(monkeypatch, str(run), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "iosweep: note: +db_pass, +target.password: masked when logged" in out
    assert "config unchanged" in out, out  # a masked value is not reported as a change


def test_reproduce_runs_with_the_values_given_again_and_never_prints_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = _logged_run(tmp_path, OVERRIDES)
    ran = []
    monkeypatch.setattr("runner.reproduce.run_runner", lambda args, origin: ran.append(args) or 7)
    code = _reproduce(monkeypatch, str(run), "--set", "+db_pass=hunter2xyz", "--set", "target.password=s3cr3t")
    assert code == 7  # the runner's exit code: it ran
    assert ran == [["engine=null", "block_kb=64", "+db_pass=hunter2xyz", "+target.password=s3cr3t"]]
    out = capsys.readouterr()
    assert "hunter2xyz" not in out.out + out.err and "s3cr3t" not in out.out + out.err


def test_reproduce_of_a_sweep_gives_swept_values_again():
    from runner.reproduce import with_given

    saved = [f"+target.password={MASK},{MASK}", "block_kb=4,64"]
    assert with_given(saved, ["target.password=a1b,c2d"], "ID", dry_run=False) == \
        ["+target.password=a1b,c2d", "block_kb=4,64"]


def test_reproduce_from_the_run_dir_prints_no_credential(tmp_path, monkeypatch, capsys):
    """The run dir holds the real values (it is the user's own record): its output masks them."""
    monkeypatch.chdir(tmp_path)
    cfg = compose(OVERRIDES)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OVERRIDES))
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True).replace("block_kb: 64", "block_kb: 4"))
    assert _reproduce(monkeypatch, str(run), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "block_kb: 4 -> 64" in out and "note" not in out
    assert "hunter2xyz" not in out and "s3cr3t" not in out


# ---- end to end -----------------------------------------------------------------------------

def _leaks(tmp_path: Path, outputs: list[str], values: list[str]) -> list[str]:
    """Where a value appears in what iosweep printed or sent out: the terminal, the sweep's summary
    files, MLflow (every param, tag, run name, metric name, artifact, and the store's bytes).
    A run dir's own files (.hydra/, config.yaml, result.json) are the user's local record: not checked."""
    found = [f"output {i}" for i, text in enumerate(outputs) if any(v in text for v in values)]
    files = [*tmp_path.glob("outputs/sweeps/*/*/summary.*"), *tmp_path.glob("outputs/mlartifacts/**/*"),
             tmp_path / "outputs" / "mlflow.db"]
    found += [str(f) for f in files if f.is_file() and any(v.encode() in f.read_bytes() for v in values)]
    _, runs = mlflow_runs(tmp_path)
    for run in runs:
        text = json.dumps([run.info.run_name, run.data.params, run.data.tags, list(run.data.metrics)])
        found += [f"run {run.info.run_id}" for v in values if v in text]
    return found


@pytest.mark.slow
def test_sweep_with_credentials_in_env_and_interpolations_leaks_nothing(tmp_path):
    """Accepted whatever preflight refuses: a credential set with hydra.job.env_set and swept
    credentials that reach the harmless key `trial` by interpolation."""
    # DB_PASSWORD in the caller's env too: the job's env_set is not among its saved overrides, and
    # reproduce (and a preflight that resolves the first point) read it from there
    env = {"API_TOKEN": "envTok4567", "DB_PASSWORD": "hunter2xyz"}
    values = ["hunter2xyz", "envTok4567"]
    p = run_cli(tmp_path, "-m", "engine=null", "size_mb=1", "+hydra.job.env_set.DB_PASSWORD=hunter2xyz",
                "trial=${oc.env:DB_PASSWORD},${oc.env:API_TOKEN}", env=env)
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and {c.data.params.get("trial") for c in children} == {MASK}
    parent = next(r for r in runs if r.data.tags.get("iosweep.sweep") == "true")
    # the sweep's overrides as typed: the interpolation, not what it resolved to
    assert "trial=${oc.env:DB_PASSWORD},${oc.env:API_TOKEN}" in parent.data.tags["iosweep.overrides"]
    outputs = [p.stdout, p.stderr]
    for target in (parent.info.run_id, children[0].info.run_id):
        r = run_cli(tmp_path, target, "--dry-run", module="runner.reproduce", env=env)
        assert r.returncode == 0, r.stderr
        outputs += [r.stdout, r.stderr]
    assert _leaks(tmp_path, outputs, values) == []


@pytest.mark.slow
def test_sweep_with_credentials_on_the_command_line_leaks_nothing(tmp_path):
    """`+key=` credentials swept: run (the schema lets + keys through) or refused by preflight in
    one line; either way no value reaches the terminal, the summary or MLflow, and a logged run
    is reproduced only with the values given again."""
    values = ["hunter2xyz", "s3cr3tPw", "0therPw", "authVal99"]
    p = run_cli(tmp_path, "-m", "engine=null", "size_mb=1", "+db_pass=hunter2xyz", "+target.password=s3cr3tPw,0therPw",
                "+auth=authVal99")
    outputs = [p.stdout, p.stderr]
    assert p.returncode in (0, 2), p.stderr
    if p.returncode == 2:  # refused before anything ran
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("iosweep: error: "), p.stderr
    else:
        _, runs = mlflow_runs(tmp_path)
        parent = next(r for r in runs if r.data.tags.get("iosweep.sweep") == "true")
        child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
        assert f"+target.password={MASK},{MASK}" in parent.info.run_name
        assert parent.data.tags["iosweep.best_point"] == f"target.password={MASK}"
        assert child.data.params["db_pass"] == MASK
        md = next(tmp_path.glob("outputs/sweeps/*/*/summary.md")).read_text()
        assert md.count(f"| {MASK} |") == 2
        dry = run_cli(tmp_path, parent.info.run_id, "--dry-run", module="runner.reproduce")
        assert dry.returncode == 0 and "masked when logged" in dry.stdout, dry.stderr
        again = run_cli(tmp_path, child.info.run_id, module="runner.reproduce")
        assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
        assert "--set +db_pass=... --set +target.password=... --set +auth=..." in again.stderr
        outputs += [dry.stdout, dry.stderr, again.stdout, again.stderr]
    assert _leaks(tmp_path, outputs, values) == []
