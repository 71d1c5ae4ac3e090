"""Pinned schedule, expert routing and SDE-step selection (pure Python, no model)."""

from __future__ import annotations

import pytest

from unirl_stream.algorithms.config import SDEConfig
from unirl_stream.algorithms.noise import derive_seed, sample_seed
from unirl_stream.algorithms.schedule import expert_of_steps, sigma_grid, timestep_grid
from unirl_stream.algorithms.selection import (
    fraction_steps,
    latent_positions,
    latent_slots,
    num_sde_steps,
    select_steps,
)


def test_sigma_grid_is_shifted_flow_matching() -> None:
    s = sigma_grid(4, 3.0)
    # u = 1, .75, .5, .25, 0 -> 3u / (1 + 2u)
    expected = [1.0, 2.25 / 2.5, 1.5 / 2.0, 0.75 / 1.5, 0.0]
    assert s == pytest.approx(expected, abs=1e-7)
    assert timestep_grid(s) == pytest.approx([1000 * x for x in expected[:-1]], rel=1e-6)
    assert sigma_grid(3, 1.0) == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0], abs=1e-7)


def test_wan22_production_grid_routes_first_nine_steps_to_high_noise_expert() -> None:
    # 20 steps, shift 5, boundary 0.875 (the Wan2.2 A14B recipe): t_8 = 882.4, t_9 = 859.4.
    experts = expert_of_steps(sigma_grid(20, 5.0), 0.875, range(20))
    assert experts == [0] * 9 + [1] * 11
    # The published fraction [0, 0.2) only reaches the high-noise expert.
    assert set(expert_of_steps(sigma_grid(20, 5.0), 0.875, fraction_steps(20, 0.0, 0.2))) == {0}
    assert set(expert_of_steps(sigma_grid(20, 5.0), 0.875, fraction_steps(20, 0.0, 0.6))) == {0, 1}
    assert expert_of_steps(sigma_grid(20, 5.0), None, range(20)) == [0] * 20


def test_fraction_selection() -> None:
    assert fraction_steps(20, 0.0, 0.2) == [0, 1, 2, 3]
    assert fraction_steps(10, 0.3, 1.0) == list(range(3, 10))
    with pytest.raises(ValueError, match="selects no step"):
        fraction_steps(4, 0.1, 0.2)
    cfg = SDEConfig(selection="fraction", fraction=(0.25, 0.75))
    assert select_steps(cfg, 8, seed=1, version=0) == [2, 3, 4, 5]
    assert latent_slots(cfg, 8) == 5


def test_random_k_is_seeded_per_sample_and_inside_fraction() -> None:
    cfg = SDEConfig(selection="random_k", k=3, fraction=(0.0, 0.5))
    draws = {tuple(select_steps(cfg, 20, seed=s, version=0)) for s in range(50)}
    assert all(len(set(d)) == 3 and list(d) == sorted(d) and max(d) < 10 for d in draws)
    assert len(draws) > 20  # different seeds draw different steps
    assert select_steps(cfg, 20, 7, 0) == select_steps(cfg, 20, 7, 99)  # version-independent
    assert latent_slots(cfg, 20) == 6
    with pytest.raises(ValueError, match="k = 11"):
        num_sde_steps(SDEConfig(selection="random_k", k=11, fraction=(0.0, 0.5)), 20)


def test_mixgrpo_window_moves_with_policy_version_and_stops_at_the_end() -> None:
    cfg = SDEConfig(selection="mixgrpo_window", window_size=3, window_shift_every=4,
                    window_stride=2, fraction=(0.0, 0.5))
    starts = [select_steps(cfg, 20, seed=0, version=v)[0] for v in range(0, 24, 4)]
    assert starts == [0, 2, 4, 6, 7, 7]  # last window [7, 8, 9] ends at the fraction's end
    assert select_steps(cfg, 20, seed=0, version=3) == [0, 1, 2]
    assert select_steps(cfg, 20, seed=5, version=9) == [4, 5, 6]  # seed-independent
    assert latent_slots(cfg, 20) == 4
    rnd = SDEConfig(selection="mixgrpo_window", window_size=3, window_progressive=False)
    windows = {tuple(select_steps(rnd, 10, seed=s, version=0)) for s in range(40)}
    assert len(windows) > 3 and all(w[2] - w[0] == 2 and w[2] <= 9 for w in windows)


def test_latent_positions_share_endpoints_and_pad() -> None:
    assert latent_positions([2, 3, 4], 4) == [2, 3, 4, 5]
    assert latent_positions([1, 5], 4) == [1, 2, 5, 6]
    assert latent_positions([1, 2], 4) == [1, 2, 3, 3]
    with pytest.raises(ValueError):
        latent_positions([1, 5], 3)


def test_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2) < 2**63
    ids = [f"p:0@0::sample:{k}" for k in range(16)]
    seeds = [sample_seed(0, i) for i in ids]
    assert len(set(seeds)) == 16
    assert sample_seed(1, ids[0]) != seeds[0]
