"""Issue 5: every bad input is one line naming the key, exit 2, before any I/O or MLflow run."""
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import mlflow_runs, run_cli
from runner import preflight

BAD = [
    ("block_kb=abc", "block_kb"), ("block_kb=0", "block_kb"), ("block_kb=-4", "block_kb"),
    ("writers=two", "writers"), ("writers=0", "writers"), ("writers=100000", "writers"),
    ("size_mb=lots", "size_mb"), ("size_mb=0", "size_mb"), ("size_mb=-5", "size_mb"),
    ("duration_s=soon", "duration_s"), ("duration_s=0", "duration_s"), ("duration_s=-1", "duration_s"),
    ("pattern=zigzag", "seq_read"), ("engine=nope", "fio, null, sync"), ("target=nfs9", "local"),
    ("block_sz=4", "did you mean block_kb"), ("pattern.readpct=5", "did you mean pattern.read_pct"),
    ("direct=true block_kb=6", "multiple of 4 KiB"), ("data.compress_ratio=2.5", "data.compress_ratio"),
    ("data.dedup_ratio=0", "data.dedup_ratio"), ("pattern=mixed pattern.read_pct=150", "pattern.read_pct"),
    ("pattern.read_pct=-1", "pattern.read_pct"), ("direct=maybe", "direct"), ("cache=lukewarm", "cache"),
    ("repeats=0", "repeats"), ("target.dir=/proc/iosweep-no", "target.dir"),
    ("size_mb=99999999", "free"), ("+block_kb=4", "without the +"),
]


@pytest.mark.parametrize("args, says", BAD)
def test_bad_input_gets_one_line_and_exit_2(tmp_path, args, says):
    p = run_cli(tmp_path, *args.split(), timeout=120)
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("iosweep: error:") and says in err, err
    assert "Traceback" not in p.stdout + p.stderr
    assert mlflow_runs(tmp_path)[1] == []  # no MLflow run
    scratch = tmp_path / "outputs" / "scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []  # and no I/O


def test_a_target_dir_that_is_a_file_is_refused_untouched(tmp_path):
    f = tmp_path / "somebodys.dat"
    f.write_bytes(b"keep me")
    p = run_cli(tmp_path, f"target.dir={f}")
    assert p.returncode == 2 and "is not a directory" in p.stderr and f.read_bytes() == b"keep me"


def test_fio_missing_is_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(os.path.realpath(os.sys.executable), bin_dir / "python")
    p = run_cli(tmp_path, "engine=fio", "size_mb=8", env={"PATH": str(bin_dir)})
    assert p.returncode == 2 and "fio is not installed: apt-get install -y fio" in p.stderr
    assert p.stderr.strip().count("\n") == 0


def test_preflight_names_the_key_in_one_line():
    with pytest.raises(preflight.UserError, match=r"^block_sz: no such key; did you mean block_kb\?$"):
        preflight.check(["block_sz=4"])
    with pytest.raises(preflight.UserError, match="^pattern=zigzag: no such choice; choose one of mixed"):
        preflight.check(["-m", "pattern=seq_read,zigzag"])
    preflight.check(["-m", "block_kb=4,64", "engine='null'", "experiment=fio_parity", "+target.token=x"])


KNOBS = ["block_kb", "writers", "size_mb", "duration_s", "ramp_s", "direct", "repeats", "seed",
         "pattern.read_pct", "data.compress_ratio", "data.dedup_ratio", "cache", "pattern", "data"]
VALUES = st.one_of(st.integers(-3, 70), st.sampled_from(["abc", "1.5", "true", "false", "null", "0", "-1",
                                                          "seq_read", "mixed", "zeros", "warm", "1e3", "''"]))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(KNOBS), VALUES, min_size=1, max_size=4))
def test_random_overrides_finish_or_fail_in_one_line(tmp_path_factory, overrides):
    """Null engine, so only the harness is exercised: a FINISHED run or one line, never a traceback."""
    cwd = tmp_path_factory.mktemp("fuzz")
    args = ["engine=null", "duration_s=0.2"] + [f"{k}={v}" for k, v in overrides.items()]
    p = run_cli(cwd, *args, timeout=120)
    assert "Traceback" not in p.stdout + p.stderr, (args, p.stderr)
    if p.returncode == 0:
        _, runs = mlflow_runs(cwd)
        assert [r.info.status for r in runs] == ["FINISHED"], args
    else:
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("iosweep: error:"), (args, p.stderr)
        assert mlflow_runs(cwd)[1] == []
