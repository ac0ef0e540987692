"""HMC checkpoints without pickle (forecasts.hmc): an .npz archive with a JSON record, read with
allow_pickle=False; resumes bitwise; refuses pickles, edited archives and foreign state layouts."""

import json
import pickle
import zipfile

import numpy as np
import pytest

from forecasts import CheckpointMismatch, LinearGaussianForward, run_hmc

SETTINGS = dict(num_chains=2, num_warmup=20, num_samples=20, seed=3, block_size=10)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(5, 2))
    return LinearGaussianForward(A, np.zeros(5), A @ np.array([0.3, -0.2]) + 0.1 * rng.normal(size=5), np.full(5, 0.1))


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    """(the run resumed from a checkpoint stopped after 3 blocks, that checkpoint's path, the
    finished checkpoint's path).  That
    a resumed run is bitwise the uninterrupted one is test_forecasts.py's
    test_hmc_checkpoint_resumes_bitwise (same code path); here: what the file holds."""
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "run.ckpt"
    partial = run_hmc(toy, checkpoint=path, max_blocks=3, **SETTINGS)
    assert not partial.complete and partial.samples.shape == (2, 10, 2)
    copy = folder / "copy.ckpt"
    copy.write_bytes(path.read_bytes())
    resumed = run_hmc(toy, checkpoint=copy, **SETTINGS)
    assert resumed.complete and resumed.samples.shape == (2, 20, 2)
    np.testing.assert_array_equal(resumed.samples[:, :10], partial.samples)
    return resumed, path, copy


def rewrite(src, dst, *, meta=None, arrays=None):
    """Copy checkpoint ``src`` to ``dst`` with some meta fields / arrays replaced."""
    with np.load(src, allow_pickle=False) as f:
        content = {name: f[name] for name in f.files}
    record = json.loads(str(content.pop("meta"))) | (meta or {})
    content |= arrays or {}
    with open(dst, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(record)), **content)


def test_checkpoint_is_an_npz_with_a_json_record(toy, runs):
    _, path, _ = runs
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as f:  # no object arrays anywhere
        meta = json.loads(str(f["meta"]))
        assert all(f[name].dtype != object for name in f.files)
    assert meta["format"] == 2 and meta["iteration"] == 30 and meta["fingerprint"] == toy.fingerprint()
    assert meta["settings"]["seed"] == 3 and meta["numpyro_version"] and meta["state_layout"][0][0] == ".i"


def test_another_numpyro_version_with_the_same_state_layout_is_read(toy, runs, tmp_path):
    resumed, _, finished = runs
    foreign = tmp_path / "foreign.ckpt"  # a finished run: reading it samples nothing (no compilation)
    rewrite(finished, foreign, meta={"numpyro_version": "0.0.1", "jax_version": "0.0.1"})
    again = run_hmc(toy, checkpoint=foreign, **SETTINGS)
    np.testing.assert_array_equal(again.samples, resumed.samples)
    np.testing.assert_array_equal(again.inverse_mass_matrix, resumed.inverse_mass_matrix)


def test_foreign_layout_edited_arrays_and_pickles_are_refused(toy, runs, tmp_path):
    _, path, _ = runs
    with np.load(path, allow_pickle=False) as f:
        layout = json.loads(str(f["meta"]))["state_layout"]
        samples = f["samples"]
    layout[1] = [".z['theta_new']", layout[1][1], layout[1][2]]
    foreign = tmp_path / "layout.ckpt"
    rewrite(path, foreign, meta={"numpyro_version": "0.0.1", "state_layout": layout})
    with pytest.raises(
        CheckpointMismatch, match=r"written by numpyro 0\.0\.1, whose sampler state differs .*theta_new"
    ):
        run_hmc(toy, checkpoint=foreign, **SETTINGS)
    edited = tmp_path / "edited.ckpt"
    rewrite(path, edited, arrays={"samples": samples + 1e-12})
    with pytest.raises(CheckpointMismatch, match="corrupt or was modified"):
        run_hmc(toy, checkpoint=edited, **SETTINGS)

    # a pickle that would run code when unpickled: refused, and the code never runs
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    hostile = tmp_path / "old.pkl"
    hostile.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointMismatch, match="not a readable sapphire .npz checkpoint.*no longer loaded"):
        run_hmc(toy, checkpoint=hostile, **SETTINGS)
    assert not (tmp_path / "pwned").exists()
