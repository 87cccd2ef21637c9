"""Comparing over seeds in the app, without Qt: per-epoch bands, the comparison job,
its rows in the results table, and cancelling it."""

import numpy as np
import pytest

from bnnlab.app.compare import comparison_json, epoch_band
from bnnlab.app.seeds import default_variant, variant_choices
from bnnlab.app.session import Session
from bnnlab.io.scenes import load_preset

WAIT_S = 240


def test_epoch_band_matches_numpy():
    rng = np.random.default_rng(3)
    curves = rng.uniform(0.2, 0.9, size=(5, 4))
    band = epoch_band([list(c) for c in curves])
    assert list(band.epochs) == [1, 2, 3, 4]
    assert list(band.n) == [5] * 4
    np.testing.assert_allclose(band.mean, curves.mean(axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(band.std, curves.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_array_equal(band.min, curves.min(axis=0))
    np.testing.assert_array_equal(band.max, curves.max(axis=0))


def test_epoch_band_runs_of_different_lengths():
    band = epoch_band([[0.5, 0.6, 0.7], [0.3, 0.4], [0.1]])
    assert list(band.n) == [3, 2, 1]
    np.testing.assert_allclose(band.mean, [0.3, 0.5, 0.7])
    np.testing.assert_allclose(band.std[:2], [np.std([0.5, 0.3, 0.1], ddof=1),
                                              np.std([0.6, 0.4], ddof=1)])
    assert np.isnan(band.std[2])  # one run: no spread
    np.testing.assert_allclose(band.min, [0.1, 0.4, 0.7])
    np.testing.assert_allclose(band.max, [0.5, 0.6, 0.7])


def test_variant_choices_offer_the_documented_pair():
    scene = load_preset("quickstart")
    choices = variant_choices(scene)
    assert "quickstart" not in choices  # itself, unedited
    assert all(load_preset(n).dataset == scene.dataset for n in choices)
    assert default_variant(scene, choices) == "ablation-stochastic"
    scene.learning_rate = 0.002  # edited: the preset is now a variant of it
    assert "quickstart" in variant_choices(scene)


@pytest.fixture
def session():
    scene = load_preset("toy-xor")
    scene.limit_train, scene.limit_test = 128, 64
    s = Session(warm_up=False, scene=scene)
    errors = []
    s.listen("error", lambda title, message: errors.append((title, message)))
    s.errors = errors
    yield s
    s.shutdown()


def _variant(s):
    v = s.scene.copy()
    v.learning_rate = 0.05
    return v


def test_compare_seeds_in_the_session(session):
    s = session
    c = s.compare_seeds([_variant(s)], seeds=2, epochs=2)
    assert c is not None and s.comparing
    assert s.wait_comparison(WAIT_S), "comparison did not end"
    assert s.errors == [] and c.state == "finished"
    assert c.labels == ["toy-xor", "toy-xor (variant)"]
    assert [[r.seed for r in c.runs[lb]] for lb in c.labels] == [[0, 1], [0, 1]]
    assert c.done == c.total == 2 * 2 * 2
    # The same statistics as bnnlab compare, on the same runs.
    assert c.report() == comparison_json(c.runs)
    band = c.bands("val_accuracy")["toy-xor"]
    curves = np.array([r.epoch_val_accuracy for r in c.runs["toy-xor"]])
    np.testing.assert_allclose(band.mean, curves.mean(axis=0))
    assert list(c.bands("loss")) == c.labels
    # Seed 0 of the scene is the run bnnlab train --seed 0 gives.
    from bnnlab.app.compare import run_seed
    alone = run_seed(s.scene, 0, epochs=2)
    assert alone.epoch_val_accuracy == c.runs["toy-xor"][0].epoch_val_accuracy
    rows = [r for r in s.result_table() if r["state"] == "seed run"]
    assert [(r["scene"], r["seed"]) for r in rows] == [
        ("toy-xor", 0), ("toy-xor", 1), ("toy-xor (variant)", 0), ("toy-xor (variant)", 1)]
    assert rows[0]["differs"] == "" and "0.05" in rows[2]["differs"]
    assert all(r["val_accuracy"] is not None and r["parameters"] > 0 for r in rows)
    assert s.focus().comparison is c


def test_cancel_comparison(session):
    s = session
    c = s.compare_seeds([_variant(s)], seeds=50, epochs=15)
    s.cancel_comparison(wait=True, timeout=WAIT_S)
    assert not s.comparing
    assert c.state == "cancelled"
    assert sum(len(v) for v in c.runs.values()) < 100


def test_compare_refuses_bad_requests(session):
    s = session
    assert s.compare_seeds([], seeds=2) is None
    assert s.compare_seeds(["no-such-preset"], seeds=2) is None
    assert s.compare_seeds([_variant(s)], seeds=0) is None
    assert len(s.errors) == 3 and not s.comparing


def test_comparisons_are_saved_in_workspaces_and_closing_knows(session, tmp_path):
    import json

    from bnnlab.app.workspace import WorkspaceError, load_workspace

    s = session
    c = s.compare_seeds([_variant(s)], seeds=2, epochs=1)
    assert s.wait_comparison(WAIT_S) and c.state == "finished"
    assert s.unsaved_comparisons == [c] and s.unsaved_text() == "1 comparison over seeds"
    path = tmp_path / "w.bnnlab.npz"
    assert s.save_workspace(path)
    assert s.unsaved_comparisons == [] and s.unsaved_text() == ""

    again = Session(warm_up=False)
    try:
        assert again.open_workspace(path)
        (d,) = again.comparisons
        assert (d.number, d.labels, d.seeds, d.epochs, d.state) == (1, c.labels, 2, 1, "finished")
        assert d.runs == c.runs  # every figure and curve of every training
        assert d.differs(d.labels[1]) == c.differs(c.labels[1])
        assert d.report() == c.report()
        assert again.unsaved_text() == ""
        assert again.focus().comparison is d
    finally:
        again.shutdown()

    # a damaged comparison is refused with the file's name and the reason
    archive = dict(np.load(path, allow_pickle=False))
    doc = json.loads(archive["workspace.json"].tobytes())
    doc["comparisons"][0]["runs"]["elsewhere"] = []
    archive["workspace.json"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    bad = tmp_path / "bad.bnnlab.npz"
    np.savez(bad, **archive)
    with pytest.raises(WorkspaceError, match=r"bad\.bnnlab\.npz: comparison 1.*'elsewhere'"):
        load_workspace(bad)
    doc["comparisons"][0]["runs"] = {"toy-xor": [{"label": "toy-xor", "seed": "zero"}]}
    archive["workspace.json"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    np.savez(bad, **archive)
    with pytest.raises(WorkspaceError, match="damaged workspace"):
        load_workspace(bad)
