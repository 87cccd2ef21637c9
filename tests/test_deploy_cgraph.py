"""Graph models (``.bnn`` version 2) in C: the generated code computes the runtime's and
the oracle's logits bit for bit, its tensor plan never lets two live tensors share memory,
and the Cortex-M builds of the residual preset need the flash and RAM the export says."""

import re
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from bnnlab.cli import main
from bnnlab.core.model import Sequential
from bnnlab.deploy.cbuild import measure, missing_tools
from bnnlab.deploy.cexport import MAX_C_RAM, export_c, generate_c
from bnnlab.deploy.fold import fold_model, input_spec_for
from bnnlab.deploy.format import ModelFileError, write_file
from bnnlab.deploy.reference import reference_logits
from bnnlab.deploy.runtime import Runtime, raw_from_unit
from bnnlab.deploy.samples import random_graph_file, random_inputs
from bnnlab.experiment import build_model
from bnnlab.io.scenes import load_preset
from test_deploy_graph import _randomize  # random batch-norm statistics, negative scales too

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed")
ARM = missing_tools("cortex-m0plus")
needs_arm = pytest.mark.skipif(ARM is not None, reason=f"Cortex-M toolchain: {ARM}")
BIN = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign", "use_bias": False}

# Runs the model on every input of a file and prints the class and each logit's bits.
HARNESS = textwrap.dedent("""\
    #include <stdio.h>
    #include <string.h>
    #include "bnn_model.h"

    int main(int argc, char **argv)
    {
        static bnn_input_t input[BNN_INPUT_SIZE];
        float logits[BNN_NUM_OUTPUTS];
        FILE *f = fopen(argv[argc - 1], "rb");
        while (f && fread(input, sizeof input[0], BNN_INPUT_SIZE, f) == BNN_INPUT_SIZE) {
            int i, best = bnn_infer(input, logits);
            printf("%d", best);
            for (i = 0; i < BNN_NUM_OUTPUTS; i++) {
                unsigned int u;
                memcpy(&u, &logits[i], sizeof u);
                printf(" %08x", u);
            }
            printf("\\n");
        }
        return f == NULL;
    }
    """)


def c_outputs(mf, raw, folder):
    """Export, compile with the strict flags, run on ``raw``: (classes, float32 logits)."""
    export_c(mf, folder)
    (folder / "harness.c").write_text(HARNESS)
    exe = folder / "harness"
    subprocess.run([GCC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe),
                    "harness.c", "bnn_model.c"], cwd=folder, check=True, capture_output=True,
                   text=True)
    data = folder / "inputs.bin"
    np.ascontiguousarray(raw, np.uint8 if mf.input.encoding == "uint8" else "<f4").tofile(data)
    out = subprocess.run([str(exe), str(data)], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    rows = [line.split() for line in out if line]
    classes = np.array([int(r[0]) for r in rows])
    logits = np.array([[int(v, 16) for v in r[1:]] for r in rows], np.uint32).view(np.float32)
    return classes, logits


def _graph(shape, f, pad_values, seed, stem_float=False):
    """A stem, then a binary chain (bits between two blocks), an add of three tensors, a
    pooled shortcut, a concatenation of three tensors of odd channel counts, a dense
    block with a float output added to another, and a binary dense head; two adds have a
    source that is read again later."""
    g = f + 2  # a second, odd width
    stem = ({"type": "Conv2D", "filters": f, "kernel_size": 3, "padding": "same"} if stem_float
            else {"type": "QuantConv2D", "filters": f, "kernel_size": 3, "padding": "same",
                  "kernel_quantizer": "ste_sign", "use_bias": False})
    layers = [
        {**stem, "name": "stem"},
        {"type": "BatchNorm", "name": "bn0"},
        # a chain of binary blocks: bits flow from c1 into c2
        {"type": "QuantConv2D", "filters": g, "kernel_size": 3, "padding": "same",
         "pad_values": pad_values, "name": "c1", **BIN},
        {"type": "BatchNorm", "name": "bn1"},
        {"type": "QuantConv2D", "filters": f, "kernel_size": (2, 3), "padding": "same",
         "pad_values": pad_values, "name": "c2", **BIN},
        {"type": "BatchNorm", "name": "bn2"},
        {"type": "QuantConv2D", "filters": f, "kernel_size": 1, "name": "c3", **BIN},
        {"type": "BatchNorm", "name": "bn3"},
        {"type": "Add", "inputs": ["bn2", "bn0", "bn3"], "name": "add1"},
        {"type": "MaxPool2D", "pool_size": 2, "inputs": ["add1"], "name": "short"},
        {"type": "QuantConv2D", "filters": g, "kernel_size": 3, "strides": 2, "padding": "same",
         "pad_values": pad_values, "inputs": ["add1"], "name": "c4", **BIN},
        {"type": "BatchNorm", "name": "bn4"},
        # bn0 is read again after the add it is a source of
        {"type": "MaxPool2D", "pool_size": 2, "inputs": ["bn0"], "name": "short0"},
        {"type": "Concatenate", "inputs": ["short", "bn4", "short0"], "name": "cat"},
        {"type": "Flatten", "name": "flat"},
        {"type": "QuantDense", "units": 7, "name": "d1", **BIN},
        {"type": "BatchNorm", "name": "bnd1"},
        {"type": "QuantDense", "units": 7, "inputs": ["flat"], "name": "d2", **BIN},
        {"type": "BatchNorm", "name": "bnd2"},
        {"type": "Add", "inputs": ["bnd1", "bnd2"], "name": "add2"},
        # so is bnd1, which d2 adds its values to
        {"type": "Concatenate", "inputs": ["add2", "bnd1"], "name": "cat2"},
        {"type": "QuantDense", "units": 5, "name": "head", **BIN},
        {"type": "BatchNorm", "name": "bnh"},
    ]
    model = Sequential.from_config({"input_shape": list(shape), "layers": layers}, seed=seed)
    return _randomize(model, np.random.default_rng(seed))


GRAPHS = [  # (input shape, channels, pad value, float stem): K of 9 to 315, never 64k
    ((8, 6, 1), 5, 1.0, False),
    ((6, 10, 3), 33, -1.0, False),
    ((4, 4, 2), 1, 0.0, True),
]


@needs_gcc
@pytest.mark.parametrize("shape,f,pad_values,stem_float", GRAPHS)
def test_graph_in_c_equals_the_runtime_and_the_oracle(tmp_path, shape, f, pad_values,
                                                      stem_float):
    model = _graph(shape, f, pad_values, seed=f, stem_float=stem_float)
    spec = input_spec_for(shape, "symmetric") if stem_float else None
    mf = fold_model(model, spec)
    ops = [n.op for n in mf.nodes]
    assert ops.count("add") == 2 and ops.count("concatenate") == 2 and "maxpool" in ops
    assert {b.input for b in mf.blocks} == {"raw", "bits", "signs"}
    assert mf.blocks[0].acc == ("float32" if stem_float else "int32")
    raw = np.random.default_rng(f).integers(0, 256, (60, *shape)).astype(np.uint8)
    classes, logits = c_outputs(mf, raw, tmp_path / "c")
    want = Runtime(mf).logits(raw, threads=1)
    np.testing.assert_array_equal(logits, want)
    np.testing.assert_array_equal(logits, reference_logits(mf, raw))
    np.testing.assert_array_equal(classes, want.argmax(1))
    assert len(set(classes)) > 1  # the inputs reach more than one class
    one, one_logits = c_outputs(mf, raw[:1], tmp_path / "one")  # a batch of one
    np.testing.assert_array_equal(one_logits, Runtime(mf).logits(raw[:1]))


# Random graphs: seeds 5 and 18 have residual branches whose add the block computes, 65 a
# max pool, 147 runs in another order than the file's (checked below).
GRAPH_SEEDS = [0, 1, 2, 3, 4, 5, 6, 18, 65, 147]


def test_the_random_graphs_cover_every_path():
    plans = {s: generate_c(random_graph_file(np.random.default_rng(s)))[1].plan
             for s in GRAPH_SEEDS}
    assert plans[5].fused and plans[18].fused
    assert plans[147].order != sorted(plans[147].order)
    assert any(n.op == "maxpool" for n in random_graph_file(np.random.default_rng(65)).nodes)


@needs_gcc
@pytest.mark.parametrize("seed", GRAPH_SEEDS)
def test_random_graph_records_in_c_equal_the_runtime(tmp_path, seed):
    """Graphs no folding makes: blocks on the raw input anywhere, float first layers, bits
    and float outputs everywhere, adds and concatenations naming a source twice."""
    rng = np.random.default_rng(seed)
    mf = random_graph_file(rng)
    raw = random_inputs(rng, mf, 40)
    _, logits = c_outputs(mf, raw, tmp_path / "c")
    np.testing.assert_array_equal(logits, Runtime(mf).logits(raw, threads=1))
    _, logits = c_outputs(mf, raw[:1], tmp_path / "one")
    np.testing.assert_array_equal(logits, reference_logits(mf, raw[:1]))


def _overlaps(a, b) -> bool:
    return a.offset < b.offset + b.size and b.offset < a.offset + a.size


@pytest.mark.parametrize("shape,f,pad_values,stem_float", GRAPHS)
def test_no_two_live_tensors_share_memory(shape, f, pad_values, stem_float):
    mf = fold_model(_graph(shape, f, pad_values, seed=1, stem_float=stem_float))
    files, info = generate_c(mf)
    plan = info.plan
    everything = [*plan.tensors.values(), *plan.signs.values()]
    assert len(plan.signs) == sum(b.input == "signs" for b in mf.blocks) - 1  # d1, d2 share
    for i, a in enumerate(everything):
        assert 0 <= a.offset and a.offset + a.size <= plan.arena[a.arena]
        for b in everything[i + 1:]:
            if a.arena != b.arena or not _overlaps(a, b):
                continue
            # sharing a place is only allowed after the last read; an add writes its sum
            # over a source it reads for the last time, at the same step
            assert a.last <= b.first or b.last <= a.first, (a, b)
    assert info.ram_bytes == plan.ram_bytes < plan.unplanned_bytes
    src = files["bnn_model.c"]
    for kind, ctype in (("bits", "uint32_t"), ("vals", "float")):
        assert f"static {ctype} bnn_{kind}[{plan.arena[kind]}];" in src
    assert "bnn_buf0" not in src and "malloc" not in src
    # the add of three tensors runs on its own; the dense blocks' sum is written by d2
    assert src.count("bnn_add(bnn_n") == 1 and src.count("bnn_block_bits_sum(&b") == 1
    assert list(plan.fused.values()) == [(len(mf.nodes) - 3, len(mf.nodes) - 4)]


def _bireal(seed=1):
    model = _randomize(build_model(load_preset("bireal-mnist"), (28, 28, 1), 10),
                       np.random.default_rng(seed))
    return fold_model(model, class_names=list("0123456789"), metadata={"name": "bireal"})


def test_bireal_plan_reuses_the_shortcut_buffers():
    files, info = generate_c(_bireal())
    # conv1 and conv3 add their values to the shortcut as they write them, over it; the
    # pooled shortcut (node 5) runs before conv2 (node 4), so that the first sum (13x13x32
    # floats) is free once conv2 has packed its signs. The peak: that sum and the pooled
    # shortcut's 6x6x32, with the signs of one 13x13x32 tensor (one word a pixel)
    assert info.plan.fused == {3: (2, 1), 9: (8, 7)}
    assert info.plan.order == [1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]
    assert info.plan.arena == {"vals": 13 * 13 * 32 + 6 * 6 * 32, "bits": 13 * 13}
    assert info.ram_bytes == 26_916 and info.plan.unplanned_bytes == 119_600
    assert "static RAM: 26916 bytes" in files["bnn_model.h"]
    src = files["bnn_model.c"]
    assert src.count("bnn_block_bits_sum(&b") == 2 and src.count("bnn_add(bnn_n") == 1


@needs_gcc
def test_bireal_in_c_predicts_what_the_runtime_predicts(tmp_path):
    mf = _bireal()
    x = np.random.default_rng(2).random((40, 28, 28, 1)).astype(np.float32)
    raw = raw_from_unit(x, "uint8")
    classes, logits = c_outputs(mf, raw, tmp_path / "c")
    np.testing.assert_array_equal(logits, Runtime(mf).logits(raw))
    np.testing.assert_array_equal(classes, Runtime(mf).predict(raw))


@needs_arm
def test_bireal_builds_for_cortex_m(tmp_path, capsys):
    mf = _bireal()
    info = export_c(mf, tmp_path / "c")
    sizes = {key: measure(tmp_path / "c", key) for key in ("cortex-m0plus", "cortex-m4")}
    for m in sizes.values():
        assert m["rodata"] >= info.table_bytes and m["data"] == 0
        # the two arenas + 784 input bytes + 10 float logits + the class the entry stores
        assert m["bss"] == info.ram_bytes + 784 + 40 + 4
        assert m["stack_static"] and 0 < m["stack_bound"] < 1024
        assert not [h for h in m["helpers"] if "div" in h or "mod" in h], m["helpers"]
    assert "__aeabi_fadd" in sizes["cortex-m0plus"]["helpers"]  # the shortcuts' sums
    assert "__aeabi_fadd" not in sizes["cortex-m4"]["helpers"]
    write_file(tmp_path / "m.bnn", mf)
    assert main(["export", str(tmp_path / "m.bnn"), "--c", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"{info.ram_bytes:,} bytes of static activation buffers" in out
    for key, title in (("cortex-m0plus", "Cortex-M0+"), ("cortex-m4", "Cortex-M4F")):
        m = sizes[key]
        assert re.search(rf"{re.escape(title)} +flash +{m['flash']:,} bytes .* RAM +"
                         f"{m['ram']:,} bytes", out), out


def test_a_graph_beyond_the_static_memory_limit_is_refused_in_one_line(monkeypatch):
    import bnnlab.deploy.cexport as cexport

    mf = _bireal()
    monkeypatch.setattr(cexport, "MAX_C_RAM", 26_000)
    with pytest.raises(ModelFileError, match=r"26,916 bytes of static arrays, beyond the "
                                             r"26,000") as err:
        generate_c(mf)
    assert "\n" not in str(err.value)
    assert MAX_C_RAM == 1 << 30


def test_file_text_in_a_graph_stays_in_comments_and_strings():
    import dataclasses

    attack = '*/\n#include <stdlib.h>\nstatic int x = system("touch PWNED");\n/*??/\\'
    mf = dataclasses.replace(_bireal(), class_names=(attack,) + tuple("123456789"),
                             metadata={"name": attack})
    files, _ = generate_c(mf)
    for name, text in files.items():
        text.encode("ascii")
        assert "??" not in text  # no trigraph
        if not name.endswith((".c", ".h")):
            continue
        # the code outside comments and string literals holds nothing of the text
        code = re.sub(r'"([^"\\\n]|\\.)*"', '""', re.sub(r"/\*.*?\*/", " ", text, flags=re.S))
        assert "system" not in code and "stdlib" not in code and "PWNED" not in code
    assert "(\\u002a\\u002f\\u000a#include" in files["bnn_model.h"]  # the comment end, escaped
    bad = dataclasses.replace(mf, class_names=("a\0b",) + tuple("123456789"))
    with pytest.raises(ModelFileError, match="NUL"):
        generate_c(bad)
