"""Graph interpolation and latent-space measurements on synthetic cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import pdist

from pipelines.evaluate.plane import principal_plane
from pipelines.evaluate.latent import (
    active_units,
    arc_length_indices,
    curve_length,
    endpoint_pairs,
    graph_shortest_path,
    has_trajectory,
    knn_accuracy,
    knn_graph,
    linear_r2,
    mf_fraction,
    Whitening,
    nearest_distances,
    off_data_distance,
    refine_polyline,
    segment_samples,
    smoothness_subset,
    step_evenness,
    typical_nn_distance,
    straight_line,
    summarise,
    trajectory_smoothness,
)


def _ring(n: int, rng: np.random.Generator, inner: float = 2.0, outer: float = 3.0) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = np.sqrt(rng.uniform(inner**2, outer**2, n))
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


@pytest.mark.parametrize("lift", [False, True], ids=["identity-2d", "embedded-3d"])
def test_graph_path_goes_round_the_hole_of_a_ring(lift: bool) -> None:
    rng = np.random.default_rng(0)
    nodes = _ring(600, rng)
    start, end = np.array([[-2.5, 0.0]]), np.array([[2.5, 0.0]])
    latent = np.concatenate([nodes, start, end])
    # Decoder: identity into 2-D, or the isometric embedding z -> (z1, z2, 0) into 3-D.
    decoded = np.hstack([latent, np.zeros((len(latent), 1))]) if lift else latent
    graph = knn_graph(latent, decoded, k=8)
    path = graph_shortest_path(graph, len(latent) - 2, len(latent) - 1)
    assert path is not None and path[0] == len(latent) - 2 and path[-1] == len(latent) - 1
    radii = np.linalg.norm(latent[path], axis=1)
    assert radii.min() > 1.9  # never enters the hole
    line = straight_line(start[0], end[0], 101)
    assert np.linalg.norm(line, axis=1).min() < 1e-9  # the straight line crosses it
    graph_length = curve_length(decoded[path])
    line_length = curve_length(np.hstack([line, np.zeros((101, 1))]) if lift else line)
    assert line_length == pytest.approx(5.0)
    # Half the circumference at radius 2.5 is 7.85; the path is at least that long
    # (up to the ring's width) and shorter than going round the outer edge.
    assert 2.0 * np.pi < graph_length < 3.4 * np.pi


def test_path_is_none_between_disconnected_parts() -> None:
    latent = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    graph = knn_graph(latent, latent, k=1)
    assert graph_shortest_path(graph, 0, 3) is None
    np.testing.assert_array_equal(graph_shortest_path(graph, 0, 1), [0, 1])


def test_edges_weigh_data_space_not_latent_distance() -> None:
    # Three latent nodes on a line; the middle one decodes far away, so the direct edge wins.
    latent = np.array([[0.0], [1.0], [2.0]])
    decoded = np.array([[0.0], [100.0], [1.0]])
    graph = knn_graph(latent, decoded, k=2)
    np.testing.assert_array_equal(graph_shortest_path(graph, 0, 2), [0, 2])
    assert graph[0, 1] == pytest.approx(100.0) and graph[1, 0] == pytest.approx(100.0)


def test_identical_decodings_stay_connected() -> None:
    latent = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    decoded = np.zeros((3, 4))
    path = graph_shortest_path(knn_graph(latent, decoded, k=1), 0, 2)
    np.testing.assert_array_equal(path, [0, 1, 2])


def test_knn_graph_checks_inputs() -> None:
    with pytest.raises(ValueError, match="k must be"):
        knn_graph(np.zeros((3, 2)), np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match="decoded"):
        knn_graph(np.zeros((3, 2)), np.zeros((2, 2)), k=1)


def test_refine_polyline_keeps_nodes_and_length() -> None:
    points = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]])
    fine = refine_polyline(points, 4)
    assert len(fine) == 2 * 4 + 1
    np.testing.assert_allclose(fine[::4], points)
    assert curve_length(fine) == pytest.approx(curve_length(points)) == pytest.approx(3.0)


def test_straight_line_end_points() -> None:
    line = straight_line(np.array([1.0, 2.0]), np.array([3.0, -2.0]), 5)
    np.testing.assert_allclose(line[[0, -1]], [[1.0, 2.0], [3.0, -2.0]])
    np.testing.assert_allclose(np.diff(line, axis=0), np.tile([[0.5, -1.0]], (4, 1)))


def test_endpoint_pairs_cross_classes_when_they_can() -> None:
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 0, 1, 1])
    pairs = endpoint_pairs(5, 20, rng, labels)
    assert pairs.shape == (20, 2)
    assert np.all(labels[pairs[:, 0]] != labels[pairs[:, 1]])
    same = endpoint_pairs(3, 5, rng, np.zeros(3))
    assert np.all(same[:, 0] != same[:, 1])
    again = endpoint_pairs(5, 20, np.random.default_rng(3), labels)
    np.testing.assert_array_equal(pairs, again)  # seeded


def test_knn_accuracy_on_separated_clusters() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    train_y = rng.integers(0, 3, 300)
    test_y = rng.integers(0, 3, 100)
    train_z = centres[train_y] + rng.normal(size=(300, 2))
    test_z = centres[test_y] + rng.normal(size=(100, 2))
    assert knn_accuracy(train_z, train_y, test_z, test_y, k=5) == 1.0
    # Shuffled labels: chance level.
    assert knn_accuracy(train_z, rng.permutation(train_y), test_z, test_y, k=5) < 0.6
    # Swapped names: zero.
    assert knn_accuracy(train_z, train_y, test_z, (test_y + 1) % 3, k=5) == 0.0


def test_knn_accuracy_tie_goes_to_nearest_class() -> None:
    train_z = np.array([[0.0], [1.0], [-2.0], [3.0]])
    train_y = np.array(["a", "b", "b", "a"])
    # k = 4 around 0.1: two votes each; "a" holds the nearest neighbour.
    assert knn_accuracy(train_z, train_y, np.array([[0.1]]), np.array(["a"]), k=4) == 1.0
    assert knn_accuracy(train_z, train_y, np.array([[0.9]]), np.array(["b"]), k=4) == 1.0
    assert knn_accuracy(train_z, train_y, np.array([[0.9]]), np.array(["b"]), k=1) == 1.0


@given(seed=st.integers(0, 2**16), latent=st.integers(1, 5))
def test_r2_is_one_for_exact_affine_factors(seed: int, latent: int) -> None:
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=(latent, 3))
    coef[0] += 0.5  # keep every target non-constant
    train_z, test_z = rng.normal(size=(50, latent)), rng.normal(size=(30, latent))
    r2 = linear_r2(train_z, train_z @ coef + 7.0, test_z, test_z @ coef + 7.0)
    assert r2.shape == (3,)
    np.testing.assert_allclose(r2, 1.0, atol=1e-9)


def test_r2_of_noise_and_of_partial_signal() -> None:
    rng = np.random.default_rng(2)
    train_z, test_z = rng.normal(size=(20000, 2)), rng.normal(size=(20000, 2))
    noise_train, noise_test = rng.normal(size=20000), rng.normal(size=20000)
    assert abs(linear_r2(train_z, noise_train, test_z, noise_test)) < 0.01
    # y = z1 + e with var(e) = 1: R^2 = 1/2.
    r2 = linear_r2(train_z, train_z[:, 0] + noise_train, test_z, test_z[:, 0] + noise_test)
    assert r2 == pytest.approx(0.5, abs=0.02)


def test_r2_below_zero_for_a_read_out_worse_than_the_mean() -> None:
    train_z = np.array([[0.0], [1.0], [2.0]])
    test_z = np.array([[0.0], [1.0], [2.0]])
    assert linear_r2(train_z, np.array([0.0, 1.0, 2.0]), test_z, np.array([2.0, 1.0, 0.0])) < 0


def test_trajectory_smoothness_of_circles_and_of_shuffled_frames() -> None:
    rng = np.random.default_rng(4)
    z, trial, frame = [], [], []
    for t in range(6):
        phase = np.linspace(0, 2 * np.pi, 200) + t
        frames = rng.permutation(200)  # storage order must not matter
        z.append(np.stack([np.cos(phase), np.sin(phase)], 1)[frames] * (1 + t))
        trial.append(np.full(200, t))
        frame.append(frames)
    z, trial, frame = np.concatenate(z), np.concatenate(trial), np.concatenate(frame)
    subset = smoothness_subset(len(z), np.random.default_rng(0), max_points=500)
    smooth = trajectory_smoothness(z, trial, frame, subset)
    assert smooth < 0.05
    scrambled = trajectory_smoothness(z, trial, rng.permutation(frame), subset)
    assert scrambled > 10 * smooth
    # Scale-free: the same trajectories in a latent space ten times larger.
    assert trajectory_smoothness(10 * z, trial, frame, subset) == pytest.approx(smooth)
    # The subset only estimates the median pairwise distance of all points.
    assert trajectory_smoothness(z, trial, frame) == pytest.approx(smooth, rel=0.1)


def test_trajectory_smoothness_needs_a_trial_with_two_frames() -> None:
    with pytest.raises(ValueError, match="two or more"):
        trajectory_smoothness(np.zeros((2, 2)), np.array([0, 1]), np.array([0, 0]))
    # has_trajectory says so beforehand (the evaluate stage draws the smoothness subset only then)
    assert not has_trajectory(np.array([0, 1])) and not has_trajectory(np.array([], dtype=int))
    assert has_trajectory(np.array([0, 1, 1]))


def test_mf_fraction() -> None:
    reference = np.arange(1, 101, dtype=float)  # 90th percentile: 90.1
    assert mf_fraction(np.array([1.0, 50.0, 95.0, 100.0]), reference, 0.9) == 0.5
    assert mf_fraction(np.full(10, 0.5), reference, 0.9) == 0.0
    with pytest.raises(ValueError):
        mf_fraction(np.array([]), reference)


def test_segment_samples_lie_between_data_points_and_commute_with_affine_maps() -> None:
    z = np.random.default_rng(5).normal(size=(100, 3)) * [1, 10, 100]
    points = segment_samples(z, 1000, np.random.default_rng(1))
    assert points.shape == (1000, 3)
    assert np.all(points >= z.min(0) - 1e-9) and np.all(points <= z.max(0) + 1e-9)
    a, b = np.array([[2.0, 1.0, 0.0], [0.0, -3.0, 1.0], [1.0, 0.0, 0.5]]), np.array([5.0, -1.0, 2.0])
    mapped = segment_samples(z @ a.T + b, 1000, np.random.default_rng(1))
    np.testing.assert_allclose(mapped, points @ a.T + b, rtol=1e-10, atol=1e-8)


def test_whitening_gives_unit_covariance_and_affine_invariant_distances() -> None:
    rng = np.random.default_rng(8)
    z = rng.normal(size=(400, 3)) @ np.array([[3.0, 0.0, 0.0], [1.0, 0.2, 0.0], [0.0, 2.0, 5.0]])
    w = Whitening.fit(z)(z)
    np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(3), atol=1e-10)
    a = np.array([[0.01, 2.0, 0.0], [-4.0, 0.0, 1.0], [0.0, 0.0, 30.0]])
    z2 = z @ a.T + np.array([7.0, -3.0, 100.0])
    w2 = Whitening.fit(z2)(z2)
    np.testing.assert_allclose(pdist(w2), pdist(w), rtol=1e-8)
    assert not np.allclose(pdist(z2), pdist(z) * np.median(pdist(z2) / pdist(z)), rtol=1e-3)  # raw ones change shape


def test_whitening_survives_a_dimension_that_never_varies() -> None:
    z = np.column_stack([np.random.default_rng(0).normal(size=50), np.zeros(50)])
    assert np.all(np.isfinite(Whitening.fit(z)(z)))


def test_step_evenness() -> None:
    even = np.linspace(0, 1, 11)[:, None] * np.ones((1, 4))
    assert step_evenness(even) == pytest.approx(1.0)
    jump = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 10.0)]) + np.arange(10)[:, None] * 0.1
    assert step_evenness(jump) > 5.0  # one step across the gap, many short ones
    assert np.isnan(step_evenness(np.zeros((3, 2)))) and np.isnan(step_evenness(np.zeros((1, 2))))


def test_nearest_distances_match_a_direct_computation_and_skip_self() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(300, 20))
    q = rng.normal(size=(50, 20))
    direct = np.sqrt(((q[:, None, :] - ref[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(q, ref, chunk=7), direct, rtol=1e-9)
    own = nearest_distances(ref[:10], ref, exclude_self=True)
    assert np.all(own > 0)
    d = np.sqrt(((ref[:10, None, :] - ref[None]) ** 2).sum(-1))
    d[np.arange(10), np.arange(10)] = np.inf
    np.testing.assert_allclose(own, d.min(1), rtol=1e-9)


def test_off_data_distance_of_frames_on_and_off_a_grid_of_data() -> None:
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    unit = typical_nn_distance(grid)
    assert unit == pytest.approx(1.0)
    on_data = grid[:20]
    assert off_data_distance(on_data, grid, unit) == pytest.approx(0.0, abs=1e-6)
    off = grid[:20] + np.array([0.0, 30.0])  # thirty grid steps above the data
    assert off_data_distance(off, grid, unit) > 20.0


def test_active_units_relative_to_the_posterior_noise_ignore_axis_scales() -> None:
    rng = np.random.default_rng(6)
    mu = np.hstack([rng.normal(size=(500, 2)), 0.01 * rng.normal(size=(500, 1))])
    var = np.tile([0.01, 0.01, 1.0], (500, 1))
    assert active_units(mu, posterior_var=var) == 2
    scales = np.array([100.0, 0.01, 1.0])
    assert active_units(mu * scales, posterior_var=var * scales**2) == 2
    assert active_units(mu * scales) == 1  # Burda's count with the prior's unit moves with the scale


def test_active_units_counts_dimensions_that_vary_with_x() -> None:
    rng = np.random.default_rng(6)
    mu = np.hstack([rng.normal(size=(500, 2)), 0.01 * rng.normal(size=(500, 3))])
    assert active_units(mu) == 2
    assert active_units(mu[:1]) == 0


def test_principal_plane_recovers_a_flat_latent_cloud() -> None:
    rng = np.random.default_rng(7)
    basis = np.linalg.qr(rng.normal(size=(5, 2)))[0]
    z = rng.normal(size=(400, 2)) * [3.0, 1.0] @ basis.T + 2.0
    mean, plane = principal_plane(z)
    np.testing.assert_allclose(mean, z.mean(0))
    projected = (z - mean) @ plane
    np.testing.assert_allclose(mean + projected @ plane.T, z, atol=1e-9)  # no loss: z lies in the plane


def test_summarise_ignores_nan() -> None:
    assert summarise([1.0, float("nan"), 3.0, 2.0]) == 2.0
    assert np.isnan(summarise([float("nan")]))


def test_arc_length_indices_are_even_in_data_space() -> None:
    # Points crowd near the start; equal arc-length picks skip the crowd.
    decoded = np.concatenate([np.linspace(0, 1, 50), np.linspace(1.5, 10, 18)])[:, None]
    idx = arc_length_indices(decoded, 5)
    assert idx[0] == 0 and idx[-1] == len(decoded) - 1
    np.testing.assert_allclose(decoded[idx, 0], [0, 2.5, 5, 7.5, 10], atol=0.3)
    np.testing.assert_array_equal(arc_length_indices(np.zeros((4, 2)), 3), [0, 2, 3])
