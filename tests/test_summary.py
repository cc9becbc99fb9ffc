"""Issue 9: findings a user can believe, computed from synthetic sweeps (fast, no I/O)."""
import csv

import matplotlib
import pytest

from runner import summary

matplotlib.use("Agg")

# what a point's params hold for the keys a plot names (a resolved config, flattened)
PARAMS = {"pattern": "seq_write", "pattern.read_pct": "100", "engine": "sync", "target": "local", "direct": "false",
          "cache": "cold", "end_fsync": "true", "block_kb": "1024", "writers": "1", "size_mb": "256",
          "duration_s": "null", "ramp_s": "0", "repeats": "1", "data": "dgen", "seed": "0", "trial": "0"}


def point(status="FINISHED", valid=True, error=None, params=None, metrics=None, **kv):
    """A sweep point as the sweep hands it to the summary: overrides k=v, metrics, validity."""
    m = {"throughput_mib_s": 100.0, "iops": 100.0, "lat_p50_us": 10.0, "lat_p99_us": 20.0, "cpu_util_pct": 5.0,
         "elapsed_s": 2.0}
    m.update({k: kv.pop(k) for k in list(kv) if k in summary.KEY_METRICS})
    m.update(metrics or {})
    ov = [f"{k.replace('__', '.')}={v}" for k, v in kv.items()]
    p = {**PARAMS, **{k.replace("__", "."): str(v) for k, v in kv.items()}, **(params or {})}
    return {"status": status, "valid": valid, "error": error, "run_id": f"run-{'-'.join(ov)}",
            "overrides": ov, "metrics": m if status == "FINISHED" else {}, "params": p}


def notes_of(pts):
    return summary.findings(*summary.rows(pts), summary.engine_ratios(pts))


# ---- 1. findings -----------------------------------------------------------------------------

def test_best_never_names_an_invalid_point_and_says_what_was_left_out():
    pts = [point(block_kb=4, throughput_mib_s=50.0), point(block_kb=64, throughput_mib_s=200.0),
           point(block_kb=1024, throughput_mib_s=9000.0, valid=False)]  # page cache: fast and not true
    notes = notes_of(pts)
    assert any(n.startswith("Best throughput: 200.0 MiB/s at block_kb=64") for n in notes), notes
    assert not any("9000" in n for n in notes), notes
    assert any("1 of 3 finished runs are not storage truth" in n and "left out" in n for n in notes), notes
    best = summary.best_point(summary.rows(pts)[1])
    assert best["block_kb"] == "64" and best["run_id"] == "run-block_kb=64"


def test_no_best_point_when_no_point_is_valid():
    pts = [point(block_kb=4, valid=False), point(block_kb=64, valid=False, throughput_mib_s=300.0)]
    notes = notes_of(pts)
    assert summary.best_point(summary.rows(pts)[1]) is None
    assert not any(n.startswith("Best") for n in notes)
    assert "No best point: none of the 2 finished runs is storage truth" in notes


def test_invalid_points_do_not_make_a_knee_or_a_scaling_figure():
    # the invalid 1024 KiB point would make 64 -> 1024 a 10x gain; without it there is a single step
    pts = [point(block_kb=4, throughput_mib_s=100.0), point(block_kb=64, throughput_mib_s=104.0),
           point(block_kb=1024, throughput_mib_s=1040.0, valid=False)]
    notes = notes_of(pts)
    assert any(n.startswith("Throughput gains < 10% at every block size step from 4 KiB") for n in notes), notes


@pytest.mark.parametrize("mib_s, expected", [
    # a plateau then a tripling: no knee at 64 (it was printed while 1024 -> 4096 tripled)
    ({4: 100, 64: 200, 1024: 205, 4096: 615},
     "No knee: gains < 10% from 64 to 1024 KiB, but gains resume at 4096 KiB (+200% over 1024 KiB)"),
    # plateau, jump, plateau: the knee is after the jump
    ({4: 100, 64: 105, 1024: 300, 4096: 310}, "Beyond 1024 KiB blocks throughput gains < 10% per step"),
    ({4: 100, 64: 1000, 1024: 1010, 4096: 1000}, "Beyond 64 KiB blocks throughput gains < 10% per step"),
    ({4: 100, 64: 200, 1024: 400}, "Throughput still gains >= 10% at every block size step up to 1024 KiB"),
])
def test_the_knee_holds_for_every_later_step(mib_s, expected):
    notes = notes_of([point(block_kb=b, throughput_mib_s=float(v)) for b, v in mib_s.items()])
    assert any(n.startswith(expected) for n in notes), notes
    assert sum("KiB" in n for n in notes) == 1, notes


def test_scaling_uses_the_peak_writer_count():
    pts = [point(writers=w, throughput_mib_s=v) for w, v in ((1, 100.0), (2, 180.0), (4, 150.0), (8, 120.0))]
    notes = notes_of(pts)
    line = next(n for n in notes if n.startswith("Scaling"))
    assert line.startswith("Scaling 1 -> 2 writers (all points): 1.80x throughput, efficiency 90% "
                           "(peak 180.0 MiB/s at 2 writers)"), line
    assert "8 writers gave 0.67x the peak" in line
    pts = [point(writers=w, throughput_mib_s=v) for w, v in ((1, 300.0), (2, 270.0))]
    assert "No scaling (all points): the peak 300.0 MiB/s is at 1 writer; 2 writers gave 0.90x that" in notes_of(pts)


def test_trial_is_a_label_aggregated_by_median_not_an_axis():
    pts = [point(block_kb=b, trial=t, throughput_mib_s=v)
           for b, vs in ((4, (100.0, 130.0, 90.0)), (64, (400.0, 300.0, 380.0)), (1024, (410.0, 420.0, 400.0)))
           for t, v in zip((1, 2, 3), vs)]
    columns, table = summary.rows(pts)
    assert columns == ["block_kb", "trial"]  # the table still tells the runs apart
    assert summary.varying_axes(pts) == ["block_kb"]
    notes = summary.findings(columns, table, [])
    assert not any("trial=" in n for n in notes), notes
    assert ("Best throughput: 410.0 MiB/s at block_kb=1024 (median of 3 runs, range 400.0–420.0)" in notes), notes
    assert any(n.startswith("Beyond 64 KiB blocks throughput gains < 10% per step") for n in notes), notes
    best = summary.best_point(table)
    assert best["trial"] == "1" and best["run_id"] == "run-block_kb=1024-trial=1"  # the median run itself
    md = summary.markdown_table(columns, table)
    assert "| 64 | 3 | 380.0 | 300.0 – 400.0 |" in md, md


def test_axis_values_read_as_typed():
    pts = [dict(point(block_kb=4), overrides=["direct=False", "engine='null'"]),
           dict(point(block_kb=4), overrides=["direct=True", "engine=sync"])]
    columns, table = summary.rows(pts)
    assert [(r["direct"], r["engine"]) for r in table] == [("false", "null"), ("true", "sync")]


def test_seed_is_a_knob_and_stays_an_axis():
    pts = [point(seed=s, block_kb=b) for s in (0, 1) for b in (4, 64)]
    assert summary.varying_axes(pts) == ["seed", "block_kb"]


def test_best_iops_is_the_best_iops_among_valid_points():
    pts = [point(block_kb=4, throughput_mib_s=80.0, iops=20480.0),
           point(block_kb=1024, throughput_mib_s=400.0, iops=400.0),
           point(block_kb=8, throughput_mib_s=300.0, iops=38400.0, valid=False)]
    table = summary.rows(pts)[1]
    assert summary.best_point(table)["block_kb"] == "1024"
    top = summary.best_point(table, "iops")
    assert top["block_kb"] == "4" and top["iops"] == 20480.0
    assert "Best IOPS: 20480 at block_kb=4" in notes_of(pts)


def test_engine_ratio_on_cache_served_points_says_so():
    pts = [point(engine=e, trial=t, throughput_mib_s=v, valid=False) for t in (1, 2) for e, v in
           (("sync", 95.0), ("fio", 100.0))]
    notes = notes_of(pts)
    assert "sync / fio at (all): 0.950 (median of 2): compares the engines, not the storage (not storage truth)" \
        in notes, notes


# ---- 2. repeats in summary.csv / summary.md ------------------------------------------------------

def test_summary_files_carry_std_and_ci_when_points_have_repeats(tmp_path):
    rep = {"repeats": 3.0, "throughput_mib_s_std": 40.0, "throughput_mib_s_ci95_low": -19.4,
           "throughput_mib_s_ci95_high": 179.4}
    pts = [point(block_kb=4, metrics=rep, throughput_mib_s=80.0), point(block_kb=64)]
    columns, table = summary.rows(pts)
    summary.write_csv(tmp_path / "s.csv", columns, table)
    with open(tmp_path / "s.csv") as f:
        got = list(csv.DictReader(f))
    assert float(got[0]["throughput_mib_s_std"]) == 40.0 and float(got[0]["throughput_mib_s_ci95_low"]) == -19.4
    assert got[1]["throughput_mib_s_std"] == ""  # one measurement: no spread to report
    md = summary.markdown_table(columns, table)
    assert "| repeats | std MiB/s | 95% CI MiB/s |" in md
    assert "| 3 | 40.0 | -19.4 – 179.4 (below 0: too few repeats or too noisy) |" in md, md


def test_summary_files_have_no_repeat_columns_without_repeats(tmp_path):
    columns, table = summary.rows([point(block_kb=4), point(block_kb=64)])
    summary.write_csv(tmp_path / "s.csv", columns, table)
    assert "std" not in (tmp_path / "s.csv").read_text().splitlines()[0]
    assert "CI" not in summary.markdown_table(columns, table)


# ---- 4. plots ------------------------------------------------------------------------------------

@pytest.fixture
def figure_texts(monkeypatch):
    """Every text drawn on each saved figure (titles, labels, legends, annotations), by file name."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    seen = {}
    save = Figure.savefig

    def spy(fig, path, *a, **kw):
        seen[path.name] = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
        return save(fig, path, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def test_fixed_settings_come_from_the_params_not_the_swept_axes():
    pts = [point(block_kb=b, writers=w) for b in (4, 64) for w in (1, 2)]
    fixed = summary.fixed_settings(*summary.rows(pts))
    assert fixed == "pattern=seq_write engine=sync target=local direct=false cache=cold end_fsync=true " \
                    "size_mb=256 ramp_s=0 repeats=1 data=dgen seed=0"
    mixed = [point(block_kb=b, params={"pattern": "mixed", "pattern.read_pct": "70"}) for b in (4, 64)]
    assert summary.fixed_settings(*summary.rows(mixed)).startswith("pattern=mixed pattern.read_pct=70 engine=sync")


def test_fixed_settings_without_params_are_the_shared_overrides():
    pts = [dict(point(block_kb=b, pattern="rand_read", size_mb=16), params=None) for b in (4, 64)]
    assert summary.fixed_settings(*summary.rows(pts)) == "pattern=rand_read size_mb=16"


def test_line_plots_mark_invalid_points_and_name_the_fixed_settings(tmp_path, figure_texts):
    pts = [point(block_kb=b, throughput_mib_s=v, valid=b != 1024) for b, v in ((4, 10.0), (64, 90.0), (1024, 800.0))]
    made = summary.plots(*summary.rows(pts), tmp_path)
    assert {p.name for p in made} == {"throughput_vs_block_kb.png", "iops_vs_block_kb.png", "p99_vs_block_kb.png"}
    texts = figure_texts["throughput_vs_block_kb.png"]
    assert summary.INVALID_LABEL in texts
    assert any(t.startswith("held fixed: pattern=seq_write engine=sync") and "size_mb=256" in t for t in texts)
    assert not any("block_kb=" in t for t in texts if t.startswith("held fixed"))


def test_non_numeric_axes_get_bar_charts(tmp_path, figure_texts):
    pts = [point(direct=d, engine=e, throughput_mib_s=v, valid=not (d == "false" and e == "sync"))
           for d in ("false", "true") for e, v in (("sync", 300.0), ("fio", 310.0))]
    made = {p.name for p in summary.plots(*summary.rows(pts), tmp_path)}
    assert made == {"throughput_by_direct.png", "throughput_by_engine.png"}
    texts = figure_texts["throughput_by_direct.png"]
    assert {"direct", "false", "true", "engine=sync", "engine=fio", summary.INVALID_LABEL} <= set(texts), texts
    assert any(t.startswith("held fixed: pattern=seq_write") for t in texts)
    assert all((tmp_path / name).stat().st_size > 0 for name in made)


def test_trials_are_not_a_plot_axis(tmp_path, figure_texts):
    pts = [point(block_kb=b, writers=w, trial=t) for b in (4, 64) for w in (1, 2) for t in (1, 2)]
    made = {p.name for p in summary.plots(*summary.rows(pts), tmp_path)}
    assert made == {"throughput_vs_block_kb.png", "iops_vs_block_kb.png", "p99_vs_block_kb.png",
                    "scaling_efficiency_vs_writers.png", "heatmap_block_kb_writers.png"}
    assert not any("trial" in t for texts in figure_texts.values() for t in texts)


def test_heatmap_marks_invalid_cells(tmp_path, figure_texts):
    pts = [point(block_kb=b, writers=w, valid=(b, w) != (64, 2)) for b in (4, 64) for w in (1, 2)]
    summary.plots(*summary.rows(pts), tmp_path)
    texts = figure_texts["heatmap_block_kb_writers.png"]
    assert summary.INVALID_LABEL in texts and sum("invalid" in t and "\n" in t for t in texts) == 1


def test_fixed_settings_read_the_points_result_json_when_the_points_carry_no_params(tmp_path):
    import json

    pts = [dict(point(block_kb=b), params=None) for b in (4, 64)]
    for i, b in enumerate((4, 64)):
        (tmp_path / str(i)).mkdir()
        params = {**PARAMS, "block_kb": str(b), "direct": "False"}
        (tmp_path / str(i) / "result.json").write_text(json.dumps({"params": params}))
    fixed = summary.fixed_settings(*summary.rows(pts), tmp_path)
    assert "direct=false" in fixed  # as typed on the command line, not Python's False
    assert fixed.startswith("pattern=seq_write engine=sync") and "size_mb=256" in fixed and "block_kb" not in fixed


def _depth_point(depth, iops, lat_mean_us, p99, writers=1):
    return {"overrides": [f"iodepth={depth}", "engine=uring"], "status": "FINISHED", "valid": True,
            "params": {"writers": str(writers)}, "error": "", "run_id": f"r{depth}",
            "metrics": {"throughput_mib_s": iops * 4 / 1024, "iops": iops, "lat_mean_us": lat_mean_us,
                        "lat_p50_us": lat_mean_us, "lat_p99_us": p99, "cpu_util_pct": 50.0, "elapsed_s": 5.0}}


def test_depth_sweep_names_the_knee_and_checks_littles_law(tmp_path):
    # IOPS 14k -> 46k -> 50k: the knee is 8 (the last step adds < 10%) while p99 rises 3x
    pts = [_depth_point(1, 14000, 1e6 * 1 / 14000, 100), _depth_point(8, 46000, 1e6 * 8 / 46000, 300),
           _depth_point(32, 50000, 1e6 * 32 / 50000, 900)]
    columns, table = summary.rows(pts)
    lines = summary.findings(columns, table, [])
    knee = [line for line in lines if "Beyond iodepth" in line]
    assert knee and knee[0].startswith("Beyond iodepth 8 IOPS gain < 10%") and "3.0x" in knee[0]
    assert any("Little's law holds" in line for line in lines)
    # a point whose loop could not keep its queue full: 32 in flight asked, 8 measured
    pts[2] = _depth_point(32, 50000, 1e6 * 8 / 50000, 900)
    columns, table = summary.rows(pts)
    lines = summary.findings(columns, table, [])
    assert any("Little's law at iodepth 32" in line and "8.0 ops in flight, not 32" in line for line in lines)
    made = summary.plots(columns, table, tmp_path)
    assert {"iops_vs_iodepth.png", "p99_vs_iodepth.png"} <= {p.name for p in made}


def test_depth_still_gaining_says_so():
    pts = [_depth_point(1, 10000, 100, 100), _depth_point(2, 20000, 100, 120, writers=1)]
    columns, table = summary.rows(pts)
    assert any("IOPS still gain >= 10% at iodepth 2" in line for line in summary.findings(columns, table, []))
