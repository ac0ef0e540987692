"""A halo's solver, hence its solution, depends on its own inputs only (issue 16).

At THETA (between the prior centre and the stiff corner) halos 1 and 5 of the 6-halo diffmah
population (seed 0) are below the stiffness threshold (1000 /Gyr; estimates 637, 892) and the
others above it (1017, 1536, 2110, 2570).  Each halo is
solved in that mixed batch, in the same batch reversed, and in a batch of six copies of itself
(a batch of one kind: the same compiled shape, so one compilation serves every call).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sapphire
from sapphire.evolution import batch_stiffness
from sapphire.solve import SolverSettings, solve_population

THETA = jnp.asarray([1.1, -2.1, -0.6, -2.1, -1.4, -0.9, 0.1, -0.9])
N_HALOS = 6


@pytest.fixture(scope="module")
def batch():
    forcing = sapphire.HaloPopulation.from_diffmah(N_HALOS, seed=0).forcing()
    stiffness = np.asarray(batch_stiffness(THETA, forcing, sapphire.DEFAULT_CONFIG))
    solve = jax.jit(lambda f: solve_population(THETA, f, None, SolverSettings(), sapphire.DEFAULT_CONFIG))
    return forcing, stiffness > SolverSettings().stiffness_threshold, solve


def test_solver_follows_each_halos_own_stiffness(batch):
    forcing, stiff, solve = batch
    assert 0 < stiff.sum() < N_HALOS  # a mixed batch: the case where groups used to decide
    sol = solve(forcing)
    assert np.asarray(sol.success).all()
    np.testing.assert_array_equal(np.asarray(sol.implicit), stiff)
    reverse = solve(jax.tree.map(lambda a: a[::-1], forcing))
    np.testing.assert_array_equal(np.asarray(reverse.implicit), stiff[::-1])
    np.testing.assert_allclose(np.asarray(reverse.log_state)[::-1], np.asarray(sol.log_state), rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["non-stiff", "stiff"])
def test_halo_alone_equals_halo_in_mixed_batch(batch, which):
    forcing, stiff, solve = batch
    i = int(np.flatnonzero(~stiff if which == "non-stiff" else stiff)[0])
    in_batch = np.asarray(solve(forcing).log_state)[i]
    alone = solve(jax.tree.map(lambda a: jnp.repeat(a[i : i + 1], N_HALOS, axis=0), forcing))
    assert np.asarray(alone.implicit).all() == bool(stiff[i]) and np.asarray(alone.implicit).any() == bool(stiff[i])
    np.testing.assert_allclose(np.asarray(alone.log_state)[0], in_batch, rtol=0, atol=1e-6)
