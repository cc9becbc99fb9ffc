"""Issue 11: experiment=io_microbench is seed 000's whole notebook, as several named grids in one
sweep (hydra/sweeper=studies), each summarised on its own."""
import csv

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra_plugins.iosweep_studies import flat, jobs, selected_studies, study_overrides

from conftest import mlflow_runs, run_cli
from runner import summary


def test_each_study_is_its_own_grid_labelled_and_the_command_line_applies_to_all():
    studies = {"blocks": {"pattern": "seq_read,rand_read", "block_kb": "4,64"},
               "formats": {"pattern": "format_read", "data": {"format": "npy,csv", "rows": 100}}}
    points = jobs(OverridesParser.create(), {"trial": "1,2"}, studies, ["size_mb=8"])
    assert len(points) == 2 * 2 * 2 + 2 * 2  # a union (12), not one product of every key (32)
    assert points[0] == ["study=blocks", "trial=1", "pattern=seq_read", "block_kb=4", "size_mb=8"]
    fmt = [p for p in points if p[0] == "study=formats"]
    assert ["study=formats", "trial=2", "pattern=format_read", "data.format=csv", "data.rows=100", "size_mb=8"] in fmt
    assert not any("block_kb" in o for p in fmt for o in p)  # no block size where the grid has none
    # a later value replaces an earlier one: the study's over the shared params, the command line's over both
    assert jobs(OverridesParser.create(), {"block_kb": "1"}, {"s": {"block_kb": "2"}}, ["block_kb=3"]) == \
        [["study=s", "block_kb=3"]]


def test_nested_keys_flatten_and_only_keeps_file_order_and_refuses_unknown_names():
    assert flat({"data": {"format": "npy", "rows": 5}, "size_mb": 8}) == {"data.format": "npy", "data.rows": 5,
                                                                          "size_mb": 8}
    assert study_overrides(None, {"data.rows": 5}, "f") == ["study=f", "data.rows=5"]
    studies = {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 3}}
    assert list(selected_studies(studies, ["c", "a"])) == ["a", "c"]
    assert list(selected_studies(studies, None)) == ["a", "b", "c"]
    with pytest.raises(HydraException, match="only=zz: no such study; choose from a, b, c"):
        selected_studies(studies, ["a", "zz"])
    with pytest.raises(HydraException, match="no study"):
        selected_studies({}, None)


def pt(study, mib_s, valid=True, **kv):
    ov = [f"study={study}"] + [f"{k}={v}" for k, v in kv.items()]
    return {"status": "FINISHED", "valid": valid, "error": None, "run_id": "-".join(ov), "overrides": ov,
            "params": {}, "metrics": {"throughput_mib_s": mib_s, "iops": 1.0, "lat_p50_us": 1.0, "lat_p99_us": 2.0}}


def test_the_summary_splits_by_study_and_compares_engines_and_targets_within_one():
    pts = [pt("mmap", 100.0, engine="sync", block_kb=4), pt("mmap", 50.0, engine="mmap", block_kb=4),
           pt("mmap", 200.0, engine="sync", block_kb=64), pt("mmap", 160.0, engine="mmap", block_kb=64),
           pt("storage", 100.0, target="local"), pt("storage", 900.0, target="tmpfs", valid=False)]
    groups = summary.by_study(pts)
    assert [name for name, _ in groups] == ["mmap", "storage"] and len(groups[0][1]) == 4
    notes = summary.findings(*summary.rows(groups[0][1]), [])
    assert "engine=mmap is 0.65x engine=sync throughput (median over 2 matched points, range 0.50-0.80)" in notes
    notes = summary.findings(*summary.rows(groups[1][1]), [])
    assert not any("target=tmpfs is" in n for n in notes)  # its only run is invalid: no ratio from it
    assert summary.by_study([{"overrides": ["block_kb=4"]}]) == [(None, [{"overrides": ["block_kb=4"]}])]
    assert "study" not in summary.sweep_axes(summary.rows(pts)[0])  # a label, never an axis


@pytest.mark.slow
def test_io_microbench_runs_every_study_in_one_sweep_at_a_smoke_size(tmp_path):
    """The whole notebook, tiny: one parent run, every study's points as its children, a summary
    section, findings and plots per study."""
    s = "hydra.sweeper.studies"
    p = run_cli(tmp_path, "-m", "experiment=io_microbench", "repeats=1", "size_mb=4",
                f"{s}.blocks.block_kb='4,1024'", f"{s}.blocks.writers='1'", f"{s}.mmap.block_kb='4'",
                f"{s}.storage.block_kb='4'", f"{s}.small_files.files_per_writer='1,16'",
                f"{s}.formats.data.rows=5000", f"{s}.formats.duration_s=0.3", f"{s}.formats.writers='1'",
                f"{s}.formats.data.format='binary,parquet'", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("iosweep.sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    per_study = {}
    for c in children:
        assert c.info.status == "FINISHED", c.data.params
        per_study[c.data.params["study"]] = per_study.get(c.data.params["study"], 0) + 1
    assert per_study == {"blocks": 4, "mmap": 4, "storage": 4, "small_files": 2, "formats": 2}
    sweep_dir = next((tmp_path / "outputs" / "sweeps").glob("*/*"))
    md = (sweep_dir / "summary.md").read_text()
    for name in per_study:
        assert f"## Study {name}" in md
    assert "engine=mmap is" in md and "target=tmpfs is" in md and "parquet" in md and "Small files" in md
    with open(sweep_dir / "summary.csv") as f:
        assert {r["study"] for r in csv.DictReader(f)} == set(per_study)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"summary.md", "summary.csv", "study_blocks", "study_mmap", "study_formats"} <= artifacts
    assert any(a.path.endswith(".png") for a in client.list_artifacts(parents[0].info.run_id, "study_blocks"))
