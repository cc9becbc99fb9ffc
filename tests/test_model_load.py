"""Issue 11, loading a model file as a real loader does: pattern=model_load reads every tensor of a
.safetensors or .gguf file (header parsed by the format's own library) in file or layer order, in
reads of at most block_kb; bytes read = the tensors' bytes; the file is never changed; bad files are
one line, exit 2."""
import hashlib
import os

import numpy as np
import pytest

from conftest import mlflow_runs, run_cli
from runner import summary
from workloads import ConfigError, Spec, run
from workloads import model

BLOCK = 64 << 10


def _synced(path):
    fd = os.open(path, os.O_RDONLY)  # written pages must reach the disk, or cache=cold cannot evict them
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _arrays(layer_prefix: str, names: tuple[str, str], embed: str):
    """A model's tensors of several sizes: an embedding, 12 layers of a big and a small tensor (layer
    10 and 11 sort before 2 by name: file order differs from layer order), a final norm."""
    rng = np.random.default_rng(7)
    arrays = {embed: rng.random((512, 300), dtype=np.float32)}  # 600 KiB: not a multiple of block_kb
    for i in range(12):
        arrays[f"{layer_prefix}{i}.{names[0]}"] = rng.random((256 + 8 * i, 256), dtype=np.float32)
        arrays[f"{layer_prefix}{i}.{names[1]}"] = rng.random((100 + i,), dtype=np.float32)
    arrays["output_norm.weight" if layer_prefix == "blk." else "model.norm.weight"] = \
        rng.random((300,), dtype=np.float32)
    return arrays


@pytest.fixture
def safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    arrays = _arrays("model.layers.", ("mlp.weight", "input_layernorm.weight"), "model.embed_tokens.weight")
    path = tmp_path / "model.safetensors"
    save_file(arrays, str(path))
    return str(_synced(path)), arrays


@pytest.fixture
def gguf_file(tmp_path):
    import gguf

    arrays = _arrays("blk.", ("ffn_up.weight", "attn_norm.weight"), "token_embd.weight")
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, a in arrays.items():
        writer.add_tensor(name, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(_synced(path)), arrays


def load_spec(path, **kw):
    base = dict(pattern="model_load", target="file", target_path=path, size_bytes=None, block_size=BLOCK)
    base.update(kw)
    return Spec(**base)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
@pytest.mark.parametrize("engine,access", [("sync", None), ("uring", None), ("mmap", "touch"), ("fio", None)])
def test_a_load_reads_every_tensors_bytes_and_leaves_the_file_unchanged(fmt, engine, access, request):
    path, arrays = request.getfixturevalue(f"{fmt}_file")
    before = sha(path)
    r = run(load_spec(path, engine=engine, access=access))
    nbytes = sum(a.nbytes for a in arrays.values())
    assert r.bytes_read == nbytes and r.bytes_written == 0
    # each tensor in reads of at most block_kb, its last one shorter
    assert r.ops_read == sum(-(-a.nbytes // BLOCK) for a in arrays.values())
    m = r.metrics()
    assert m["tensors"] == len(arrays) == 26
    assert m["tensor_max_mib"] == max(a.nbytes for a in arrays.values()) / (1 << 20)
    assert m["tensor_min_kib"] == min(a.nbytes for a in arrays.values()) / 1024
    assert m["load_s"] == m["elapsed_s"] > 0 and m["load_gb_s"] == pytest.approx(nbytes / 1e9 / m["load_s"])
    assert sha(path) == before
    if engine == "mmap":  # llama.cpp's load: every page of every tensor touched through the mapping
        assert m["major_faults"] + m["minor_faults"] > 0


def test_the_reads_follow_the_header_offsets_in_file_or_layer_order(safetensors_file):
    path, arrays = safetensors_file
    found = model.tensors(path)
    names = [t.name for t in found]
    by_file = model.load(load_spec(path).check())
    # file order: every op after the last, covering each tensor's [offset, offset + nbytes) exactly
    assert (np.diff(by_file.offsets) > 0).all()
    ends = by_file.offsets + by_file.lengths
    assert by_file.bytes == sum(t.nbytes for t in found)
    assert ((by_file.lengths <= BLOCK) & (by_file.lengths > 0)).all()
    for i, t in enumerate(found):
        mine = by_file.lines == i
        assert by_file.offsets[mine][0] == t.offset and ends[mine][-1] == t.offset + t.nbytes
    assert names.index("model.layers.10.mlp.weight") < names.index("model.layers.2.mlp.weight")  # by name
    by_layer = model.load(load_spec(path, order="layer").check())
    order = model.ordered(found, "layer")
    layers = [model.layer_of(order[i].name) for i in by_layer.lines]
    assert layers == sorted(layers) and layers[0] == -1  # embedding and norm first, then layer 0, 1, ... 11
    seq = [order[i].name for i in dict.fromkeys(by_layer.lines.tolist())]
    assert seq.index("model.layers.2.mlp.weight") < seq.index("model.layers.10.mlp.weight")
    # file order within a layer: the layer's tensors keep their file order
    in_layer_3 = [n for n in seq if n.startswith("model.layers.3.")]
    assert in_layer_3 == [n for n in names if n.startswith("model.layers.3.")]
    assert sorted(by_layer.offsets.tolist()) == by_file.offsets.tolist()  # the same reads, reordered


def test_layer_order_on_a_gguf_file(gguf_file):
    path, _ = gguf_file
    trace = model.load(load_spec(path, order="layer").check())
    order = model.ordered(model.tensors(path), "layer")
    layers = [model.layer_of(order[i].name) for i in trace.lines]
    assert layers == sorted(layers) and set(layers) == {-1, *range(12)}


def test_the_prefetcher_follows_a_load_across_tensors(safetensors_file):
    path, arrays = safetensors_file
    r = run(load_spec(path, prefetch_blocks=8))
    assert r.bytes_read == sum(a.nbytes for a in arrays.values())
    assert r.metrics()["prefetch_issued"] > 0


def _random_file(tmp_path):
    p = tmp_path / "noise.safetensors"
    p.write_bytes(np.random.default_rng(1).bytes(1 << 16))
    return p


def _truncated(src, tmp_path, name):
    p = tmp_path / name
    with open(src, "rb") as f:
        p.write_bytes(f.read()[: os.path.getsize(src) - 5000])
    return p


@pytest.mark.parametrize("case", ["random", "truncated_safetensors", "truncated_gguf", "json_not_a_header",
                                  "empty"])
def test_a_file_that_is_not_a_whole_model_is_one_config_error_naming_it(case, tmp_path, request):
    if case == "random":
        bad = _random_file(tmp_path)
    elif case == "truncated_safetensors":
        bad = _truncated(request.getfixturevalue("safetensors_file")[0], tmp_path, "cut.safetensors")
    elif case == "truncated_gguf":
        bad = _truncated(request.getfixturevalue("gguf_file")[0], tmp_path, "cut.gguf")
    elif case == "json_not_a_header":
        bad = tmp_path / "list.safetensors"
        bad.write_bytes((2).to_bytes(8, "little") + b"[]")
    else:
        bad = tmp_path / "empty.gguf"
        bad.write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        load_spec(str(bad)).check()
    assert e.value.key == "target.path" and str(bad) in str(e.value) and "\n" not in str(e.value)
    if case.startswith("truncated"):
        assert "truncated" in str(e.value)


@pytest.mark.parametrize("kw,key", [(dict(target="local", target_path=None), "target"),
                                    (dict(order="random"), "pattern.order"), (dict(writers=2), "writers"),
                                    (dict(duration_s=1.0), "duration_s")])
def test_knobs_a_load_cannot_have_are_refused(safetensors_file, kw, key):
    with pytest.raises(ConfigError) as e:
        load_spec(safetensors_file[0], **kw).check()
    assert e.value.key == key


@pytest.mark.slow
@pytest.mark.parametrize("which", ["random", "truncated"])
def test_the_cli_refuses_a_bad_model_file_in_one_line(which, tmp_path, safetensors_file):
    bad = _random_file(tmp_path) if which == "random" else \
        _truncated(safetensors_file[0], tmp_path, "cut.safetensors")
    p = run_cli(tmp_path, "pattern=model_load", "target=file", f"target.path={bad}")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iosweep: error: target.path") and str(bad) in lines[0]
    assert "Traceback" not in p.stderr and mlflow_runs(tmp_path)[1] == []


@pytest.mark.slow
def test_the_preset_needs_a_file_and_compares_each_variant_with_the_first(tmp_path, safetensors_file):
    p = run_cli(tmp_path, "-m", "experiment=model_load_ab")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "target.path" in p.stderr and "model_load" in p.stderr
    p = run_cli(tmp_path, "-m", "experiment=model_load_ab", f"target.path={safetensors_file[0]}",
                "hydra.sweeper.params.hint='none'", "hydra.sweeper.params.trial='1'")
    assert p.returncode == 0, p.stderr
    _, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.data.params["engine"] for c in children) == ["mmap", "sync", "sync"]
    nbytes = sum(a.nbytes for a in safetensors_file[1].values())
    assert all(c.data.metrics["bytes_total"] == nbytes and c.data.metrics["tensors"] == 26 for c in children)
    assert "* Model load baseline engine=sync hint=none:" in p.stdout, p.stdout
    assert "* engine=sync hint=none prefetch.blocks=8: " in p.stdout and "x of baseline load GB/s" in p.stdout
    assert "* engine=mmap hint=none: " in p.stdout
    assert p.stdout.count(" model load ") == 3 and " tensors of " in p.stdout  # each run's console line


def test_with_repeats_load_s_is_one_loads_time(safetensors_file):
    r = run(load_spec(safetensors_file[0], repeats=2))
    m = r.metrics()
    assert m["load_s"] == pytest.approx(m["elapsed_s"] / 2)
    assert m["load_gb_s"] == pytest.approx(r.bytes_read / 1e9 / m["elapsed_s"])
    assert r.bytes_read == 2 * sum(a.nbytes for a in safetensors_file[1].values())


def _row(point, gb_s, valid="true", **params):
    return {"status": "FINISHED", "valid": valid, "throughput_mib_s": gb_s * 1e9 / (1 << 20), "load_gb_s": gb_s,
            "load_s": 1 / gb_s, "device_read_req_kb": 128.0, "major_faults": float("nan"),
            "_point": (("point", point),), "point": point, "_params": params}


def test_the_finding_ratios_come_from_valid_runs_against_the_first_variant():
    sync = dict(engine="sync", hint="none")
    mmap = dict(engine="mmap", hint="willneed")
    table = [_row("a", 1.0, **sync), _row("a", 1.2, **sync), _row("a", 9.0, valid="false", **sync),
             _row("b", 1.3, **mmap), _row("b", 1.5, **mmap), _row("b", 0.1, valid="false", **mmap)]
    out = summary.load_ratios(table, ["point"])
    assert out[0].startswith("Model load baseline engine=sync hint=none: 1.000 GB/s")  # median_low of 1.0, 1.2
    assert out[1].startswith("engine=mmap hint=willneed: 1.30x of baseline load GB/s")
    table = [_row("a", 1.0, valid="false", **sync), _row("b", 1.3, **mmap)]
    assert "no valid run of the baseline" in summary.load_ratios(table, ["point"])[0]
