"""``bnnlab train``: per-layer statistics in the JSON, --float, --passes."""

import json

import pytest

from bnnlab.cli import main
from bnnlab.experiment import build_model
from bnnlab.io.checkpoints import load_checkpoint
from bnnlab.io.scenes import load_preset

KEYS = {"name", "weights_at_clip", "weights_beyond_clip", "flip_ratio", "gated_fraction", "grad_norm"}


def _rows(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_train_json_has_layer_stats_and_both_validations(capsys):
    rows = _rows(capsys, "train", "toy-xor", "--epochs", "2", "--json")
    assert len(rows) == 2
    for r in rows:
        names = [ls["name"] for ls in r["layers"]]
        assert names and all(set(ls) == KEYS for ls in r["layers"])
        for ls in r["layers"]:
            for k in ("weights_at_clip", "weights_beyond_clip", "flip_ratio"):
                assert 0.0 <= ls[k] <= 1.0
        gated = [ls["gated_fraction"] for ls in r["layers"] if ls["gated_fraction"] is not None]
        assert gated and all(0.0 <= g <= 1.0 for g in gated)
        assert 0.0 <= r["val_accuracy_batch_stats"] <= 1.0 and r["bn_reestimated"] is False


def test_train_float_trains_the_apps_twin(capsys, tmp_path):
    out = tmp_path / "twin.npz"
    rows = _rows(capsys, "train", "toy-xor", "--epochs", "1", "--float", "--json", "--out", str(out))
    assert len(rows) == 1
    model, meta = load_checkpoint(out)
    scene = load_preset("toy-xor")
    twin = build_model(scene.full_precision_twin(), (2,), 2)  # what the app's Ctrl+T trains
    assert model.config() == twin.config()
    assert meta["scene"] == "toy-xor-fp-twin"
    assert not any(q.kernel_quantizer is not None for q in model.quant_layers)
    assert all(ls["weights_beyond_clip"] >= 0 for ls in rows[0]["layers"])


def test_train_passes_on_a_stochastic_scene(capsys):
    rows = _rows(capsys, "train", "ablation-stochastic", "--epochs", "1", "--limit-train", "640",
                 "--json", "--passes", "1,4")
    final = rows[-1]
    assert final["stochastic"] is True
    assert [p["k"] for p in final["averaged_passes"]] == [1, 4]
    assert main(["train", "toy-xor", "--passes", "0"]) == 2
    assert "--passes" in capsys.readouterr().err
