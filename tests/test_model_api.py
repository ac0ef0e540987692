"""Public API of the engine: shapes, histories, bad input, CLI.

The API is the same for every solver, so these tests use Tsit5 alone, which compiles ~3x faster
than the default "auto" (both solvers in every program).  "auto" keeps its own tests: reverse
mode below, the 2-device stiff batch below, test_engine_accuracy (centre and stiff corner) and
test_solver_choice."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sapphire
from sapphire import cosmology
from sapphire.physics import N_STATE

N_HALOS = 6


@pytest.fixture(scope="module")
def halos():
    return sapphire.HaloPopulation.from_diffmah(N_HALOS, seed=3)


SOLVER = "tsit5"


@pytest.fixture(scope="module")
def model():
    return sapphire.Model(solver=SOLVER)


@pytest.fixture(scope="module")
def centre_run(model, halos):
    return model.evolve_with_jacobian(sapphire.DEFAULT_PRIOR.centre, halos)


def test_evolve_shapes_and_success(centre_run):
    out, jac = centre_run
    assert out.log_state.shape == (N_HALOS, N_STATE)
    assert out.log_mhalo.shape == (N_HALOS,)
    assert jac.shape == (N_HALOS, N_STATE, 8)
    assert bool(np.all(out.success)) and out.n_failed == 0
    assert np.all(np.isfinite(out.log_state)) and np.all(np.isfinite(jac))
    assert np.all(np.asarray(out.num_steps) > 10)
    for key in ("sfr", "oxygen_abundance", "log_gas_ratio", "log_smhm", "baryon_fraction", "t_cool_over_t_ff_r0"):
        assert out.diagnostics[key].shape == (N_HALOS,)
        assert np.all(np.isfinite(out.diagnostics[key])), key


def test_diagnostics_consistent_with_states(centre_run, halos):
    out, _ = centre_run
    ls = np.asarray(out.log_state)
    np.testing.assert_allclose(out.diagnostics["log_smhm"], ls[:, 0] - np.asarray(out.log_mhalo), atol=1e-12)
    np.testing.assert_allclose(out.diagnostics["log_gas_ratio"], ls[:, 2] - ls[:, 0], atol=1e-12)
    np.testing.assert_allclose(out.log_mhalo, halos.log_mhalo_z0, atol=1e-6)
    # baryons cannot exceed the cosmic fraction by much (inflow carries f_b, outflows remove)
    assert np.all(np.asarray(out.diagnostics["baryon_fraction"]) <= sapphire.DEFAULT_CONFIG.baryon_fraction * 1.05)


def test_evolve_matches_jacobian_run(model, halos, centre_run):
    out, _ = centre_run
    plain = model.evolve(sapphire.DEFAULT_PRIOR.centre, halos)
    # the sensitivity solve takes its own steps: same answer within the tolerance
    np.testing.assert_allclose(plain.log_state, out.log_state, atol=2e-3)


def test_histories(model, halos, centre_run):
    t0 = cosmology.present_age()
    times = np.array([0.05, 2.0, 6.0, t0])
    hist = model.evolve(sapphire.DEFAULT_PRIOR.centre, halos, times=times)
    assert hist.log_state.shape == (N_HALOS, 4, N_STATE)
    # before every halo starts (t = 0.05 Gyr < grid start) entries are NaN, by design
    assert np.all(np.isnan(hist.log_state[:, 0]))
    exists = times[None, :] >= np.asarray(halos.t_start)[:, None]
    assert np.all(np.isfinite(np.asarray(hist.log_state)[exists]))
    # stellar mass only grows
    stars = np.where(exists, np.asarray(hist.log_state[..., 0]), -np.inf)
    assert np.all(np.diff(stars[:, 1:], axis=1) >= -1e-9)
    np.testing.assert_allclose(hist.log_state[:, -1], centre_run[0].log_state, atol=2e-3)


@pytest.mark.parametrize(
    "theta, match",
    [
        (np.zeros(7), "shape"),
        (np.full((2, 2), 0.0), "shape"),
        (np.r_[2.5, np.full(7, -1.0)], "A_etaM = 2.5 lies outside"),
        (np.r_[np.full(7, -0.25), 0.0], None),  # inside the box: fine
        (np.r_[np.nan, np.full(7, -1.0)], "non-finite A_etaM"),
    ],
)
def test_bad_theta(model, halos, theta, match):
    if match is None:
        sapphire.DEFAULT_PRIOR.validate(theta)
        return
    with pytest.raises(ValueError, match=match):
        model.evolve(theta, halos)


def test_bad_halos_and_times(model, halos):
    with pytest.raises(ValueError, match="HaloPopulation"):
        model.evolve(sapphire.DEFAULT_PRIOR.centre, np.ones((3, 4)))
    with pytest.raises(ValueError, match="increasing"):
        model.evolve(sapphire.DEFAULT_PRIOR.centre, halos, times=[3.0, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        model.evolve(sapphire.DEFAULT_PRIOR.centre, halos, times=[1.0, np.inf])
    with pytest.raises(ValueError, match="t0"):
        model.evolve(sapphire.DEFAULT_PRIOR.centre, halos, times=[1.0, 20.0])
    with pytest.raises(ValueError, match="solver"):
        sapphire.Model(solver="euler")


def test_step_cap_is_flagged_not_returned(halos):
    capped = sapphire.Model(solver=SOLVER, max_steps=8)
    out = capped.evolve(sapphire.DEFAULT_PRIOR.centre, halos)
    assert not np.any(np.asarray(out.success))
    assert out.n_failed == N_HALOS
    assert np.all(np.isnan(out.log_state))


def test_differentiable_inside_user_transformations(halos):
    """jax.grad (reverse mode) through the default ("auto") solve agrees with model.jacobian."""
    from sapphire.solve import solve_population

    model = sapphire.Model()
    forcing = halos.forcing()
    theta = np.asarray(sapphire.DEFAULT_PRIOR.centre)

    def total_stars(th):
        sol = solve_population(th, forcing, None, model.settings, model.config)
        return sol.log_state[:, -1, 0].sum()

    grad = jax.jit(jax.grad(total_stars))(theta)
    jac = model.jacobian(theta, halos)
    # Same algorithm, but two separately compiled programs: rounding can flip an accept/reject
    # decision of the adaptive controller, so agreement is at the solver tolerance (rtol 1e-5).
    np.testing.assert_allclose(grad, np.asarray(jac)[:, 0, :].sum(axis=0), rtol=1e-4, atol=1e-8)


def test_cli_evolve(centre_run, tmp_path, capsys, monkeypatch):
    """``sapphire evolve`` writes what the API returns for the same halos (in this process: the
    compiled solve of ``centre_run`` serves both; a killed ``python -m sapphire.cli generate``
    runs the module entry point in test_training_sets)."""
    from sapphire.cli import main

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main sets the device count there
    out = tmp_path / "run.npz"
    argv = ["evolve", "--halos", str(N_HALOS), "--halo-seed", "3", "--solver", SOLVER, "--jacobian", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "failed solves: 0" in capsys.readouterr().out
    data = np.load(out)
    assert data["log_state"].shape == (N_HALOS, 7) and data["jacobian"].shape == (N_HALOS, 7, 8)
    np.testing.assert_array_equal(data["log_state"], np.asarray(centre_run[0].log_state))
    np.testing.assert_array_equal(data["jacobian"], np.asarray(centre_run[1]))


def test_reverse_mode_finite_when_some_halos_fail(halos):
    """A failed halo is NaN in value, but must not poison jax.grad of a masked sum."""
    from sapphire.solve import SolverSettings, solve_population

    settings = SolverSettings(solver="tsit5", max_steps=60)
    forcing = halos.forcing()

    def masked_sum(th):
        sol = solve_population(th, forcing, None, settings, sapphire.DEFAULT_CONFIG)
        states = sol.log_state[:, -1, 0]
        return jnp.sum(jnp.where(sol.success, states, 0.0)), sol.success

    (_, success), grad = jax.value_and_grad(masked_sum, has_aux=True)(jnp.asarray(sapphire.DEFAULT_PRIOR.centre))
    assert 0 < int(np.sum(~np.asarray(success))) < N_HALOS or not np.all(success)
    assert np.all(np.isfinite(np.asarray(grad)))


STIFF_CORNER = [2.0, -3.0, 0.0, -3.0, -2.0, 0.0, -0.5, 0.0]


def test_stiff_batch_split_over_devices_matches_one_device():
    """Two host devices: a batch holding stiff halos is dealt to both devices by rank of
    stiffness (Model.evolve_placed) and must give the one-device answer, Jacobians and
    summaries included, in the caller's halo order.  The one-device answer is solved in two
    halves of three halos in the caller's order (a halo's result does not depend on its batch,
    test_solver_choice.py): the halves reuse the program compiled for each device's share of
    three, which saves one compilation of the "auto" sensitivity solve (22-31 s on the 2-core VM)."""
    script = f"""
import os, json, numpy as np, jax, jax.numpy as jnp
import sapphire
from sapphire.evolution import at_z0, evolve_population
from sapphire.population_summaries import summaries_and_jacobian_from_solve
assert jax.local_device_count() == 2
model, theta = sapphire.Model(), jnp.asarray({STIFF_CORNER})
halos = sapphire.HaloPopulation.from_diffmah(6, seed=0)
obs = sapphire.Observations.default()
ev, jac = model.evolve_with_jacobian(theta, halos)
s, sjac = model.summaries_with_jacobian(theta, halos, obs)
# placed and called as evolve_placed calls each share (free passed, not defaulted: jit keys its
# cache on the call's signature), so that its compiled program serves
halves = [evolve_population(*jax.device_put((theta, jax.tree.map(lambda a: a[i : i + 3], halos.forcing())),
                                           jax.local_devices()[0]), None, model.settings, model.config, True, None)
          for i in (0, 3)]
reference = jax.tree.map(lambda *parts: jnp.concatenate(parts), *halves)
ref_state, _, ref_sol, _, ref_jac = reference
ref_mean, _, _, ref_sjac, _ = summaries_and_jacobian_from_solve(at_z0(reference), obs, model.config)
print(json.dumps(dict(
    implicit=np.asarray(ev.implicit).tolist(), ref_implicit=np.asarray(ref_sol.implicit).tolist(),
    success=bool(np.all(ev.success)),
    state=float(np.max(np.abs(ev.log_state - ref_state[:, 0]))),
    jac=float(np.max(np.abs(jac - ref_jac[:, 0]))),
    mean=float(np.max(np.abs(s.mean - ref_mean))), sjac=float(np.max(np.abs(sjac - ref_sjac))),
    devices=sorted(str(d) for d in ev.log_state.devices()))))
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["success"] and any(result["implicit"]), result  # the batch really is stiff
    assert result["implicit"] == result["ref_implicit"]
    for key in ("state", "jac", "mean", "sjac"):
        assert result[key] < 1e-9, (key, result)
