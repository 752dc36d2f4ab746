"""Measurements of a learned latent space: graph interpolation and the paper's claims as numbers.

Plain NumPy/SciPy functions on arrays (encoded points, decoded means, labels),
so that each one can be tested on synthetic cases without a model.

- Graph-based interpolation (METHOD section 6; Chen et al., "Fast approximate
  geodesics for deep generative models", 2019, and the VHP-VAE paper, section 5):
  nodes sampled from the learned prior, a k-nearest-neighbour graph in latent
  space whose edges weigh the data-space distance of the decoded means, and the
  shortest path by Dijkstra's algorithm (scipy.sparse.csgraph).
- Claims of the paper made measurable (definitions in the README's Evaluation section):
  kNN classification accuracy in latent space, R^2 of a linear read-out of
  continuous factors, smoothness of latent trajectories of motion trials, and
  the fraction of data lying on high magnification-factor ridges.
- Scale (METHOD section 6): latent distances are measured after `Whitening` and
  MF figures relative to the median MF at the encoded data, so that no affine map
  of the latent space changes them. In data space: the evenness of decoded steps
  and the distance of decoded frames to the training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist


# --------------------------------------------------------------------------------------
# Graph-based interpolation
# --------------------------------------------------------------------------------------


def knn_graph(latent: np.ndarray, decoded: np.ndarray, k: int) -> csr_matrix:
    """Symmetric kNN graph over latent nodes weighted by data-space distance.

    latent: (N, L) node positions, used only to pick each node's k nearest
    neighbours; decoded: (N, D) decoded means of the nodes, whose Euclidean
    distances weigh the edges. An edge exists when either end point is among
    the other's k nearest neighbours (the graph is undirected).
    """
    latent = np.asarray(latent, dtype=np.float64)
    decoded = np.asarray(decoded, dtype=np.float64).reshape(len(decoded), -1)
    n = len(latent)
    if len(decoded) != n:
        raise ValueError(f"latent has {n} nodes but decoded has {len(decoded)}")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} nodes, got {k}")
    _, idx = cKDTree(latent).query(latent, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    cols = idx[:, 1:].reshape(-1)  # column 0 is the node itself
    # Duplicate latent points could put a node's own index outside column 0.
    keep = rows != cols
    rows, cols = rows[keep], cols[keep]
    weights = np.linalg.norm(decoded[rows] - decoded[cols], axis=1)
    # csgraph treats an explicit zero as "no edge"; identical decodings stay connected.
    weights = np.maximum(weights, np.finfo(np.float64).tiny)
    graph = csr_matrix((weights, (rows, cols)), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def graph_shortest_path(graph: csr_matrix, start: int, end: int) -> np.ndarray | None:
    """Node indices of the shortest path start -> end (Dijkstra), or None when unreachable."""
    dist, pred = shortest_path(graph, method="D", directed=False, indices=start, return_predecessors=True)
    if not np.isfinite(dist[end]):
        return None
    path = [end]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    return np.asarray(path[::-1], dtype=np.int64)


def straight_line(z0: np.ndarray, z1: np.ndarray, n_points: int) -> np.ndarray:
    """n_points equally spaced points from z0 to z1 inclusive: (n_points, L)."""
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    return (1.0 - t) * np.asarray(z0, dtype=np.float64) + t * np.asarray(z1, dtype=np.float64)


def refine_polyline(points: np.ndarray, steps_per_segment: int) -> np.ndarray:
    """Insert steps_per_segment - 1 points on each segment of a latent polyline.

    Decoding the refined polyline measures the decoded curve between nodes too,
    so graph paths and straight lines are measured at comparable resolution.
    """
    points = np.asarray(points, dtype=np.float64)
    if steps_per_segment < 1:
        raise ValueError(f"steps_per_segment must be >= 1, got {steps_per_segment}")
    if len(points) < 2:
        return points.copy()
    t = np.arange(steps_per_segment)[None, :, None] / steps_per_segment
    a, b = points[:-1, None, :], points[1:, None, :]
    inner = ((1.0 - t) * a + t * b).reshape(-1, points.shape[1])
    return np.concatenate([inner, points[-1:]], axis=0)


def curve_length(decoded: np.ndarray) -> float:
    """Length of a polyline in data space: sum of consecutive Euclidean distances. decoded: (n, D...)."""
    decoded = np.asarray(decoded, dtype=np.float64).reshape(len(decoded), -1)
    if len(decoded) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(decoded, axis=0), axis=1).sum())


def arc_length_indices(decoded: np.ndarray, n: int) -> np.ndarray:
    """Indices of n points of a decoded polyline equally spaced in data-space arc length.

    Frames shown along an interpolation then change by equal amounts, whatever
    the latent spacing of the path's nodes. The first and last points are kept.
    """
    decoded = np.asarray(decoded, dtype=np.float64).reshape(len(decoded), -1)
    if len(decoded) == 0 or n < 1:
        return np.zeros(0, dtype=np.int64)
    cumulative = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(decoded, axis=0), axis=1))])
    if cumulative[-1] == 0:
        return np.linspace(0, len(decoded) - 1, n).round().astype(np.int64)
    targets = np.linspace(0.0, cumulative[-1], n)
    idx = np.searchsorted(cumulative, targets).clip(0, len(decoded) - 1)
    below = (idx - 1).clip(0)
    closer_below = np.abs(cumulative[below] - targets) < np.abs(cumulative[idx] - targets)
    return np.where(closer_below, below, idx).astype(np.int64)


def endpoint_pairs(n: int, n_pairs: int, rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
    """n_pairs index pairs (i, j), i != j, drawn from range(n).

    With labels, pairs join points of different classes where that is possible,
    since interpolating across classes is what crosses gaps of the manifold.
    """
    if n < 2:
        raise ValueError(f"need at least 2 points to pick endpoint pairs, got {n}")
    pairs = []
    for _ in range(n_pairs):
        i = int(rng.integers(n))
        candidates = np.flatnonzero(np.arange(n) != i)
        if labels is not None:
            other = candidates[labels[candidates] != labels[i]]
            if len(other):
                candidates = other
        pairs.append((i, int(rng.choice(candidates))))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------------------
# Claims as numbers
# --------------------------------------------------------------------------------------


def active_units(mu: np.ndarray, threshold: float = 0.01, posterior_var: np.ndarray | None = None) -> int:
    """Latent dimensions j with Cov_x(E_q[z_j|x]) > threshold * unit_j (Burda et al. 2016); mu: (N, L).

    unit_j = 1, the N(0, I) prior's variance (Burda's count; scale-dependent), or, given
    posterior_var (N, L), E_x[Var_q(z_j|x)]: the same count with the posterior noise as unit,
    which no per-axis rescaling of the latent space changes.
    """
    mu = np.asarray(mu, dtype=np.float64)
    if len(mu) < 2:
        return 0
    unit = 1.0 if posterior_var is None else np.asarray(posterior_var, dtype=np.float64).mean(axis=0)
    return int((mu.var(axis=0, ddof=1) > threshold * unit).sum())


def knn_accuracy(
    train_z: np.ndarray, train_labels: np.ndarray, test_z: np.ndarray, test_labels: np.ndarray, k: int = 5
) -> float:
    """Accuracy of a k-nearest-neighbour majority vote (train -> test) in latent space.

    A tie between classes goes to the tied class whose member is nearest.
    """
    train_z = np.asarray(train_z, dtype=np.float64)
    test_z = np.asarray(test_z, dtype=np.float64)
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    if len(test_z) == 0:
        raise ValueError("no test points")
    k = min(k, len(train_z))
    if k < 1:
        raise ValueError("no training points")
    _, idx = cKDTree(train_z).query(test_z, k=k)
    idx = idx.reshape(len(test_z), k)  # query drops the axis for k = 1
    neighbour_labels = train_labels[idx]  # (n_test, k), nearest first
    predicted = np.empty(len(test_z), dtype=train_labels.dtype)
    for row, labels in enumerate(neighbour_labels):
        classes, first, counts = np.unique(labels, return_index=True, return_counts=True)
        tied = counts == counts.max()
        predicted[row] = classes[tied][np.argmin(first[tied])]
    return float(np.mean(predicted == test_labels))


def linear_r2(train_z: np.ndarray, train_y: np.ndarray, test_z: np.ndarray, test_y: np.ndarray) -> np.ndarray:
    """Held-out R^2 of an ordinary least-squares fit y ~ a + B z, one value per target column.

    train_y/test_y: (N,) or (N, T). R^2 = 1 - SS_res / SS_tot on the test split
    (SS_tot about the test mean), so it is negative for a read-out worse than
    the constant mean and 1 for an exact one.
    """
    train_z = np.asarray(train_z, dtype=np.float64)
    test_z = np.asarray(test_z, dtype=np.float64)
    train_y = np.asarray(train_y, dtype=np.float64)
    test_y = np.asarray(test_y, dtype=np.float64)
    squeeze = train_y.ndim == 1
    train_y = train_y.reshape(len(train_y), -1)
    test_y = test_y.reshape(len(test_y), -1)
    design = np.hstack([np.ones((len(train_z), 1)), train_z])
    coef, *_ = np.linalg.lstsq(design, train_y, rcond=None)
    pred = np.hstack([np.ones((len(test_z), 1)), test_z]) @ coef
    ss_res = ((test_y - pred) ** 2).sum(axis=0)
    ss_tot = ((test_y - test_y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res > 0, -np.inf, 1.0))
    return r2[0] if squeeze else r2


SMOOTHNESS_POINTS, NN_POINTS = 2000, 1000  # the most points `trajectory_smoothness`, `typical_nn_distance` use


def smoothness_subset(n: int, rng: np.random.Generator, max_points: int = SMOOTHNESS_POINTS) -> np.ndarray | None:
    """The points whose pairwise distances `trajectory_smoothness` takes the median of: None (all n) or a draw."""
    return rng.choice(n, max_points, replace=False) if n > max_points else None


def nn_subset(n: int, rng: np.random.Generator, max_points: int = NN_POINTS) -> np.ndarray | None:
    """The reference points `typical_nn_distance` measures: None (all n) or a sorted draw of max_points."""
    return np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else None


def has_trajectory(trial: np.ndarray) -> bool:
    """Whether some trial has two or more frames (what `trajectory_smoothness` needs)."""
    return bool(len(trial)) and int(np.unique(np.asarray(trial), return_counts=True)[1].max()) >= 2


def median_pairwise_distance(z: np.ndarray, subset: np.ndarray | None = None) -> float:
    """Median Euclidean distance between the points of z (those of the index ``subset`` when given)."""
    z = np.asarray(z, dtype=np.float64)
    if subset is not None:
        z = z[subset]
    if len(z) < 2:
        raise ValueError("need at least 2 points for a pairwise distance")
    return float(np.median(pdist(z)))


def trajectory_smoothness(z: np.ndarray, trial: np.ndarray, frame: np.ndarray, subset: np.ndarray | None = None) -> float:
    """Median over trials of the median consecutive-frame latent step, over the median pairwise distance.

    Frames of a trial are put in frame order; a step joins each frame to the
    next one present. Dividing by the median pairwise latent distance (over the
    points of ``subset``, `smoothness_subset`) makes the number independent of
    the latent scale: small values mean that motions trace smooth curves, values
    near 1 that consecutive frames land anywhere. Trials of one frame are skipped.
    """
    z, trial, frame = np.asarray(z, dtype=np.float64), np.asarray(trial), np.asarray(frame)
    per_trial = []
    for t in np.unique(trial):
        members = np.flatnonzero(trial == t)
        if len(members) < 2:
            continue
        ordered = z[members[np.argsort(frame[members], kind="stable")]]
        per_trial.append(np.median(np.linalg.norm(np.diff(ordered, axis=0), axis=1)))
    if not per_trial:
        raise ValueError("no trial has two or more frames")
    return float(np.median(per_trial) / median_pairwise_distance(z, subset))


def segment_samples(z: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points on segments between random pairs of rows of z: z_i + t (z_j - z_i), t ~ U(0, 1); (n, L).

    They cover the region the data span, gaps included; unlike a bounding box they
    commute with affine maps (the same draws give A p + b for codes A z + b).
    """
    z = np.asarray(z, dtype=np.float64)
    if len(z) < 2:
        raise ValueError(f"need at least 2 points to draw segments, got {len(z)}")
    i = rng.integers(len(z), size=n)
    j = rng.integers(len(z), size=n)
    t = rng.random(n)[:, None]
    return z[i] + t * (z[j] - z[i])


def mf_fraction(mf_data: np.ndarray, mf_reference: np.ndarray, quantile: float = 0.9) -> float:
    """Fraction of data points whose MF exceeds the given quantile of MF over a reference set.

    The reference is MF over the region the data span (`segment_samples`): a value
    near 1 - quantile means the data ignore the MF landscape; near 0 that the data
    avoid the high-MF ridges (a smooth latent space); above it that the data lie on
    them. A ratio of MF values, so it does not depend on the latent scale.
    """
    mf_data = np.asarray(mf_data, dtype=np.float64)
    if len(mf_data) == 0:
        raise ValueError("no data points")
    threshold = np.quantile(np.asarray(mf_reference, dtype=np.float64), quantile)
    return float(np.mean(mf_data > threshold))


def summarise(values: Sequence[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(np.median(arr)) if len(arr) else float("nan")


# --------------------------------------------------------------------------------------
# Scale-free measurement
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Whitening:
    """z -> L^-1 (z - m), with m the mean and L L^T the covariance of the codes it was fitted on.

    Under z -> A z + b (any invertible A) whitened codes only turn by an orthogonal
    matrix, so distances between whitened points do not depend on the latent scale or
    axes. A singular covariance gets a tiny floor instead of an infinite scale.
    """

    mean: np.ndarray  # (L,)
    inverse_factor: np.ndarray  # (L, L), L^-1 of the Cholesky factor

    @classmethod
    def fit(cls, codes: np.ndarray) -> Whitening:
        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2 or len(codes) < 2:
            raise ValueError(f"need at least 2 codes of shape (N, L) to whiten, got shape {codes.shape}")
        mean = codes.mean(axis=0)
        cov = np.atleast_2d(np.cov(codes, rowvar=False))
        floor = 1e-12 * max(float(np.trace(cov)) / len(cov), np.finfo(np.float64).tiny)
        try:
            factor = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            factor = np.linalg.cholesky(cov + floor * np.eye(len(cov)))
        return cls(mean, np.linalg.inv(factor))

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, dtype=np.float64) - self.mean) @ self.inverse_factor.T


def step_evenness(decoded: np.ndarray) -> float:
    """Largest step between consecutive decoded frames over the mean step (1 = perfectly even).

    decoded: (n, D...) frames in order; in data space, so no latent rescaling touches
    it. A jump across a gap is one step many times the mean. NaN without movement.
    """
    decoded = np.asarray(decoded, dtype=np.float64).reshape(len(decoded), -1)
    if len(decoded) < 2:
        return float("nan")
    steps = np.linalg.norm(np.diff(decoded, axis=0), axis=1)
    mean = steps.mean()
    return float(steps.max() / mean) if mean > 0 else float("nan")


def nearest_distances(queries: np.ndarray, reference: np.ndarray, exclude_self: bool = False,
                      chunk: int = 512) -> np.ndarray:
    """Euclidean distance from each query row to its nearest reference row, float64: (n,).

    Brute force in chunks (trees do not help in data spaces of many dimensions).
    exclude_self: queries are the first rows of the reference, not their own neighbours.
    """
    q = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
    r = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    if len(r) < (2 if exclude_self else 1):
        raise ValueError("the reference set is too small for a nearest neighbour")
    r_sq = (r * r).sum(axis=1)
    out = np.empty(len(q))
    for start in range(0, len(q), chunk):
        block = q[start:start + chunk]
        d2 = (block * block).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * block @ r.T
        if exclude_self:
            rows = np.arange(len(block))
            d2[rows, start + rows] = np.inf
        out[start:start + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def typical_nn_distance(reference: np.ndarray, subset: np.ndarray | None = None) -> float:
    """Median distance of reference points (those of the sorted index ``subset``, `nn_subset`) to their nearest other one."""
    r = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    if len(r) < 2:
        raise ValueError("need at least 2 reference points for a nearest-neighbour distance")
    index = np.arange(len(r)) if subset is None else np.asarray(subset)
    order = np.concatenate([index, np.setdiff1d(np.arange(len(r)), index)])
    return float(np.median(nearest_distances(r[index], r[order], exclude_self=True)))


def off_data_distance(decoded: np.ndarray, reference: np.ndarray, unit: float) -> float:
    """Mean over decoded frames of (distance to the nearest reference sample) / unit.

    With training data as reference and `typical_nn_distance` as unit, about 1 means
    frames are as close to real data as real data are to each other; more: off the data.
    """
    if not unit > 0:
        return float("nan")
    return float(nearest_distances(decoded, reference).mean() / unit)
