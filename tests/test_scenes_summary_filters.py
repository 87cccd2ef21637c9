import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnlab.core.filters import analyze_filters, analyze_kernel, canonical, pattern_grid
from bnnlab.core.summary import format_summary, profile_model
from bnnlab.data import dataset_info
from bnnlab.experiment import build_model
from bnnlab.io.scenes import (SceneError, SceneWarning, load_preset, load_scene, preset_names,
                              save_scene)

LARQ = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "larq" / "summary.txt"


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_builds(name):
    scene = load_preset(name)
    info = dataset_info(scene.dataset)
    model = build_model(scene, info.input_shape, len(info.class_names))
    assert model.output_shape == (len(info.class_names),)


def test_required_presets_exist():
    names = set(preset_names())
    assert {"larq-mnist-bnn", "larq-mnist-fp", "binarynet-mlp", "quickstart", "ablation-no-clip",
            "ablation-no-gating", "ablation-stochastic"} <= names
    assert any(n.startswith("toy-") for n in names)


@pytest.mark.parametrize("name", ["larq-mnist-bnn", "ablation-no-gating", "ablation-stochastic"])
def test_scene_roundtrip(tmp_path, name):
    scene = load_preset(name)
    scene.seed = 7
    scene.learning_rate = 0.005
    path = tmp_path / "s.toml"
    save_scene(scene, path)
    again = load_scene(path)
    assert again == scene
    assert again.resolved_layers() == scene.resolved_layers()


def test_overrides_apply_to_quantized_layers():
    scene = load_preset("ablation-no-gating")
    layers = scene.resolved_layers()
    assert layers[3]["input_quantizer"] == {"name": "ste_sign", "clip_value": "none"}
    assert "input_quantizer" not in layers[0]  # the first layer keeps a real-valued input
    noclip = load_preset("ablation-no-clip").resolved_layers()
    assert all(lc.get("kernel_constraint") is None for lc in noclip if "kernel_quantizer" in lc)


def _write(tmp_path, text):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def test_unknown_keys_warn_missing_keys_default(tmp_path):
    p = _write(tmp_path, 'colour = "red"\n[training]\nepochs = 2\nspeed = 3\n'
                         '[[model.layers]]\ntype = "Flatten"\n[[model.layers]]\ntype = "Dense"\nunits = 10\n')
    with pytest.warns(SceneWarning) as rec:
        scene = load_scene(p)
    msgs = " ".join(str(w.message) for w in rec)
    assert "colour" in msgs and "training.speed" in msgs
    assert scene.epochs == 2 and scene.batch_size == 64 and scene.dataset == "digits"


@pytest.mark.parametrize("text,match", [
    ('[training]\nepochs = 0\n', r"training\.epochs: must be a positive integer"),
    ('[training]\nlearning_rate = "fast"\n', r"training\.learning_rate"),
    ('[training]\noptimizer = "rmsprop"\n', r"unknown optimizer 'rmsprop'"),
    ('[binarization]\nactivation = "sgn"\n', r"binarization\.activation: unknown binarizer"),
    ('[[model.layers]]\ntype = "Conv3D"\n', r"model\.layers\[0\]: unknown layer type"),
    ('[data]\ninput_scale = "big"\n', r"data\.input_scale"),
    ('schema_version = 99\n', r"newer than this bnnlab"),
    ('name = [\n', r"not valid TOML"),
])
def test_invalid_values_fail_with_file_key_reason(tmp_path, text, match):
    if "model.layers" not in text:
        text += '[[model.layers]]\ntype = "Flatten"\n'
    p = _write(tmp_path, text)
    with pytest.raises(SceneError, match=match) as exc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_scene(p)
    assert str(p) in str(exc.value)


def test_save_is_atomic_and_validates(tmp_path):
    scene = load_preset("quickstart")
    target = tmp_path / "q.toml"
    target.write_text("original")
    scene.epochs = -1
    with pytest.raises(SceneError):
        save_scene(scene, target)
    assert target.read_text() == "original"
    assert [p.name for p in tmp_path.iterdir()] == ["q.toml"]


def _larq_rows():
    rows = {}
    for line in LARQ.read_text().splitlines():
        m = re.match(r"\| (\w+)\s+(\S+)\s+(\(.*?\))\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+) \|", line)
        if m:
            rows[m.group(1)] = m.groups()[1:]
    return rows


@pytest.mark.skipif(not LARQ.exists(), reason="Larq reference summary not available")
def test_summary_matches_larq_row_by_row():
    model = build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10)
    prof = profile_model(model)
    ref = _larq_rows()
    assert len(ref) == len(prof.layers)
    total = re.search(r"\| Total\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(\d+) \|", LARQ.read_text()).groups()
    assert total == (str(prof.params_1bit), str(prof.params_32bit), f"{prof.memory_kib:.2f}",
                     str(prof.macs_1bit), str(prof.macs_32bit))
    for lp in prof.layers:
        prec, shape, p1, p32, mem, m1, m32 = ref[lp.name]
        assert prec == ("-" if lp.input_precision is None else str(lp.input_precision))
        assert shape == "(-1, " + ", ".join(map(str, lp.output_shape)) + ")"
        assert (int(p1), int(p32)) == (lp.params_1bit, lp.params_32bit)
        assert mem == ("0" if lp.memory_kib == 0 else f"{lp.memory_kib:.2f}")
        assert m1 == ("?" if lp.macs_1bit is None else str(lp.macs_1bit))
        assert m32 == ("?" if lp.macs_32bit is None else str(lp.macs_32bit))
    text = format_summary(prof)
    larq_text = LARQ.read_text()
    for key in ("Total params", "Trainable params", "Non-trainable params", "Model size",
                "Model size (8-bit FP weights)", "Float-32 Equivalent", "Compression Ratio of Memory",
                "Number of MACs", "Ratio of MACs that are binarized"):
        want = re.search(re.escape(key) + r"\s+(.+?)\s+\|", larq_text).group(1)
        got = re.search(re.escape(key) + r"\s+(.+?)\s+\|", text).group(1)
        assert got == want, key


def test_fp_summary_matches_tutorial_size():
    prof = profile_model(build_model(load_preset("larq-mnist-fp"), (28, 28, 1), 10))
    assert f"{prof.memory_kib:.2f}" == "366.29" and prof.binarized_mac_ratio == 0
    bnn = profile_model(build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10))
    assert bnn.energy_pj < prof.energy_pj / 10


def test_filter_patterns_counts_and_inverse_pairs():
    k = np.ones((3, 3, 2, 4), np.float32)
    k[0, 0, :, 1] = -1  # pattern 1 in both channels of filter 1
    k[:, :, :, 2] = -1  # all -1: pattern 511, the inverse of pattern 0
    k[:, :, 1, 3] = -1
    k[0, 0, 1, 3] = 1  # 511 ^ 1 = 510: inverse of pattern 1, in channel 1
    r = analyze_kernel("c", k, output_pixels=10)
    assert r.total == 8
    assert r.counts[0] == 3 and r.counts[1] == 2 and r.counts[511] == 2 and r.counts[510] == 1
    assert r.unique == 4 and r.unique_up_to_sign == 2
    # channel 0: {0, 1, 511, 0} -> classes {0, 1}; channel 1: {0, 1, 511, 510} -> {0, 1}
    assert r.reusable_per_channel == 4
    assert r.ops_total == 9 * 8 * 10 and r.ops_dedup == 9 * 4 * 10 and r.saving == pytest.approx(0.5)
    assert r.top[0] == (0, 3)
    np.testing.assert_array_equal(pattern_grid(1), [[-1, 1, 1], [1, 1, 1], [1, 1, 1]])
    assert canonical(np.array([511, 1, 510])).tolist() == [0, 1, 1]


def test_filters_only_on_binary_3x3_convs():
    model = build_model(load_preset("larq-mnist-bnn"), (28, 28, 1), 10)
    reports = analyze_filters(model)
    assert [r.layer for r in reports] == ["quant_conv2d", "quant_conv2d_1", "quant_conv2d_2"]
    assert reports[1].total == 32 * 64 and reports[1].unique <= 512
    assert analyze_filters(build_model(load_preset("larq-mnist-fp"), (28, 28, 1), 10)) == []


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_any_text_survives_saving_and_loading(tmp_path, text):
    """Names and descriptions with quotes, backslashes and every control character (TOML
    allows none raw but tab) are written escaped and read back equal."""
    scene = load_preset("quickstart")
    scene.name = text if text.strip() else "x" + text  # a blank name is refused
    scene.description = text + "\r\x00\x1b\x7f\b\f\t\"\\"
    path = tmp_path / "s.toml"
    save_scene(scene, path)
    back = load_scene(path)
    assert (back.name, back.description) == (scene.name, scene.description)


@given(key=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12))
def test_any_key_is_written_as_toml_reads_it(key):
    from bnnlab.io.scenes import _toml_key, tomllib

    assert tomllib.loads(f"{_toml_key(key)} = 1") == {key: 1}


def test_a_lone_surrogate_is_refused_with_the_reason(tmp_path):
    scene = load_preset("quickstart")
    scene.description = "half \ud800 a pair"
    with pytest.raises(SceneError, match="surrogate"):
        save_scene(scene, tmp_path / "s.toml")
    assert not (tmp_path / "s.toml").exists()
