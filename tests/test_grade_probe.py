"""The grade probe: answer states are the states the first-token read-out reads, cached and resumed per chunk; the
fit picks C and biases on validation; the probe is saved and read back."""
import numpy as np
import pytest
import torch

from she_lib.config import get_profile
from she_lib.grade_probe import GradeProbeConfig, cached_states, fit_probe, load_probe, train_probe
from she_lib.inference import answer_states, grade_probabilities, grade_token_ids
from she_lib.labels import ESCI
from she_lib.schema import render_prompt


def _prompts(tok, df, n=7):
    return [render_prompt(tok, r, ESCI, "grade_first") for r in df.to_dict("records")][:n]


def test_last_answer_state_is_what_the_lm_head_reads(tiny_policy, splits):
    m, tok = tiny_policy.model, tiny_policy.tokenizer
    prompts = _prompts(tok, splits["test"])
    h = answer_states(m, tok, prompts, layers=(-1,), batch_size=3, progress=False)
    assert h.shape == (7, m.config.hidden_size) and h.dtype == np.float32
    ids = grade_token_ids(tok, ESCI.words)
    with torch.no_grad():
        z = m.lm_head(torch.from_numpy(h).to(m.lm_head.weight.dtype)).float()[:, ids]
    np.testing.assert_allclose(torch.softmax(z, -1).numpy(),
                               grade_probabilities(m, tok, prompts, ESCI.words, batch_size=3, progress=False),
                               atol=1e-4)
    # two layers are concatenated in order; the shared-prefix path gives the plain path's states
    two = answer_states(m, tok, prompts, layers=(1, -1), batch_size=3, progress=False)
    plain = answer_states(m, tok, prompts, layers=(1, -1), batch_size=3, progress=False, share_common_prefix=False)
    assert two.shape == (7, 2 * m.config.hidden_size)
    np.testing.assert_allclose(two[:, -m.config.hidden_size:], h, atol=1e-5)
    np.testing.assert_allclose(two, plain, atol=1e-4)


def _blobs(n, seed):
    """Four grades on the corners of a square in 2-D, the rare grades (Complement) 1 in 10."""
    rng = np.random.default_rng(seed)
    centres = {"Exact": (2, 2), "Substitute": (-2, 2), "Complement": (-2, -2), "Irrelevant": (2, -2)}
    y = rng.choice(ESCI.words, size=n, p=[0.5, 0.25, 0.1, 0.15])
    return np.array([centres[v] for v in y]) + rng.normal(0, 0.7, (n, 2)), y


def test_fit_probe_separates_the_grades_and_picks_c_on_validation():
    x, y = _blobs(400, 0)
    xv, yv = _blobs(200, 1)
    probe = fit_probe(x, y, xv, yv, ESCI.words, GradeProbeConfig(c_grid=(1.0, 1e-6), tune_biases=False))
    # C = 1e-6 shrinks W to ~0, and with balanced weights every grade gets ~1/4: validation picks C = 1
    assert probe.c == 1.0 and probe.validation_macro_f1 > 0.95
    assert (probe.predict(xv) == yv).mean() > 0.95
    p = probe.probabilities(xv)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-9)
    # columns follow ESCI.words whatever order sklearn keeps its classes in
    assert (np.array(ESCI.words)[p.argmax(1)] == probe.predict(xv)).all()
    with pytest.raises(ValueError, match="Complement"):
        fit_probe(x[y != "Complement"], y[y != "Complement"], xv, yv, ESCI.words)


def test_probe_biases_are_tuned_on_validation():
    # one feature, two grades: Exact at 0, Irrelevant at 1 in train; validation is shifted by +0.6, so the fitted
    # boundary (~0.5) calls most validation Exacts Irrelevant until a bias moves it
    x = np.array([[0.0]] * 50 + [[1.0]] * 50)
    y = np.array(["Exact"] * 50 + ["Irrelevant"] * 50)
    xv = x + 0.6
    words = ["Exact", "Irrelevant"]
    plain = fit_probe(x, y, xv, y, words, GradeProbeConfig(c_grid=(1.0,), tune_biases=False))
    assert plain.validation_macro_f1 == pytest.approx(1 / 3)  # all Irrelevant: F1 0 and 2/3
    tuned = fit_probe(x, y, xv, y, words, GradeProbeConfig(c_grid=(1.0,)))
    assert tuned.biases[0] == 0 and tuned.biases[1] < 0 and tuned.validation_macro_f1 == 1.0
    assert (tuned.predict(xv) == y).all()


def test_states_are_cached_per_chunk_and_resumed(trained_sft, splits, tmp_path):
    import shutil

    run = tmp_path / "sft"
    shutil.copytree(trained_sft, run)
    prof = get_profile("smoke")
    cfg = GradeProbeConfig(depths=(1.0, 0.5), chunk=4)  # the tiny model's 2 layers: states 2 and 1
    df = splits["validation"].iloc[:10]
    first = cached_states(run, prof, df.iloc[:6], "validation", cfg, progress=False)
    folder = run / "states_validation_grade_first_L2_1"
    assert sorted(p.name for p in folder.glob("*.npz")) == ["chunk_00000.npz", "chunk_00001.npz"]
    both = cached_states(run, prof, df, "validation", cfg, progress=False)  # 4 pairs more: one chunk more
    assert len(list(folder.glob("*.npz"))) == 3
    np.testing.assert_array_equal(both[:6], first)

    class Refuse:  # every pair is cached now: no model is needed
        def __getattr__(self, name):
            raise AssertionError("the model was used")
    np.testing.assert_array_equal(cached_states(run, prof, df.iloc[::-1], "validation", cfg, policy=Refuse(),
                                                progress=False), both[::-1])
    # read for another split (an extra folder's pairs read as a whole, then as a train split): no model either,
    # and nothing new is written
    np.testing.assert_array_equal(cached_states(run, prof, df.iloc[2:8], "train", cfg, policy=Refuse(),
                                                progress=False), both[2:8])
    assert not (run / "states_train_grade_first_L2_1").exists()


def test_train_probe_saves_a_probe_that_predicts(trained_sft, splits, tmp_path):
    import shutil

    run = tmp_path / "sft"
    shutil.copytree(trained_sft, run)
    prof = get_profile("smoke")
    cfg = GradeProbeConfig(c_grid=(0.1,), chunk=64)
    probe = train_probe(run, prof, splits["train"], splits["validation"], cfg, progress=False)
    back = load_probe(run / "grade_probe.joblib")
    x = cached_states(run, prof, splits["validation"], "validation", cfg, progress=False)
    assert back.c == 0.1 and (back.predict(x) == probe.predict(x)).all()
    assert set(back.predict(x)) <= set(ESCI.words)
