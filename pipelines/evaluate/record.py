"""Pass 1 of the evaluate stage: ask the model everything once, into one record of arrays.

`query_record` encodes the test split, decodes, scores it (the loss terms and the
importance-sampled log-likelihood, vhp_core.estimators), measures the magnification
factor (MF, vhp_core.geometry) at the data, between the data, on the grid of the
latent map and along each interpolation, and finds the graph paths between
endpoint pairs (METHOD section 6). The answers are an `EvaluationRecord`: NumPy
arrays and a small JSON header. Pass 2 (`numbers.py`) computes every metric from
it with NumPy alone and pass 3 (`figures.py`) draws every figure from it;
`save_record`/`load_record` keep it beside the metrics (record.npz) so that both
can be redone without the model.

Every random choice happens here, in one fixed order. NumPy ``rng``: the test
points of the log-likelihood, the training subset (and its binarisation for
Bernoulli data), the smoothness subset, the MF points and segments, the
nearest-neighbour subset, the plotted points, the endpoint pairs, the
reconstructed points. Torch ``generator``: the importance samples (and those of the
check at a second K_eval), the graph's prior nodes, the prior samples shown. The
global torch RNG draws the one z per point of the loss terms.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pipelines.evaluate import latent
from pipelines.evaluate.plane import LatentPlane, extent
from pipelines.params import EvaluateParams
from pipelines.queries import decode_means, encode_means, mean_loss_terms, rows, test_inputs
from preprocessing.atomic import atomic_write
from vhp_core import HierarchicalPrior
from vhp_core.estimators import log_likelihood_and_elbo
from vhp_core.geometry import magnification_factor, magnification_factor_grid

# Label drawn as colour on the latent map, in order of preference (mocap, faces, image data).
COLOUR_LABELS = ("motion", "azimuth", "label", "identity")
RECORD_FORMAT = 1


@dataclass(frozen=True)
class EvaluationRecord:
    """What the model and the data answered, for the numbers and the figures of one evaluation.

    ``info`` is JSON: 'header' (the first keys of metrics.json), 'title', 'attrs' (the
    data group's attributes), 'x_shape', 'latent_dim', 'colour' (the latent map's label,
    its 'colour_kind' and 'class_names'), 'loss_terms' (means over the test split),
    'll_inner_samples' (K_eval, None without a hierarchical prior), 'll_sigma',
    'final_lambda' and 'final_c_hat'. Per-pair lists hold one array per endpoint pair;
    a graph path that does not reach its end is an empty array.
    """

    params: EvaluateParams
    info: dict[str, Any]
    log_px: np.ndarray  # (n_ll,) log p(x) of the log-likelihood's test points
    ll_elbo: np.ndarray  # (n_ll,) the ELBO from the same importance samples
    log_px_check: np.ndarray | None  # (n_ll,) log p(x) at the second K_eval (hierarchical prior only)
    mu_test: np.ndarray  # (N, L) E_q[z|x] of the test split
    var_test: np.ndarray  # (N, L) Var_q[z|x]
    test_labels: dict[str, np.ndarray]  # name -> (N,)
    mu_train: np.ndarray  # (M, L) E_q[z|x] of the training subset
    train_labels: dict[str, np.ndarray]  # name -> (M,)
    reference: np.ndarray  # (M, D) float32 training rows that decoded frames are compared with
    smoothness_subset: np.ndarray | None  # test points of the smoothness's pairwise median (None: all)
    nn_subset: np.ndarray | None  # reference points of the typical nearest-neighbour distance (None: all)
    mf_data: np.ndarray  # (mf_points,) MF at encoded test points
    mf_span: np.ndarray  # (mf_points,) MF on segments between encoded test points
    plot_index: np.ndarray  # test points drawn on the latent map
    extent: np.ndarray  # (4,) x low, x high, y low, y high of the latent map, in plane coordinates
    mf_grid: np.ndarray  # (grid_size, grid_size) MF on the plane's grid over the extent
    pairs: np.ndarray  # (P, 2) test-point indices of the interpolations' ends
    nodes: np.ndarray  # (n_nodes, L) the graph's nodes: prior samples, then the pairs' ends
    line_z: list[np.ndarray]  # (line_steps, L) per pair
    line_x: list[np.ndarray]  # (line_steps, D) decoded
    line_mf: list[np.ndarray]  # (line_steps,)
    path_z: list[np.ndarray]  # (nodes on the path, L), empty when unreachable
    graph_z: list[np.ndarray]  # (refined points, L): the path refined segment by segment
    graph_x: list[np.ndarray]  # (refined points, D) decoded
    graph_mf: list[np.ndarray]  # (refined points,)
    recon_x: np.ndarray  # (R, D) test rows that are reconstructed
    recon: np.ndarray  # (R, D) their decoded E_q[z|x]
    prior_x: np.ndarray  # (n_samples, D) decoded prior samples


_DICTS = ("test_labels", "train_labels")
_LISTS = ("line_z", "line_x", "line_mf", "path_z", "graph_z", "graph_x", "graph_mf")


# --------------------------------------------------------------------------------------
# Queries only the evaluate stage asks
# --------------------------------------------------------------------------------------


@torch.no_grad()
def encode_variances(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Var_q[z|x] for every row of x: (N, latent)."""
    parts = [model.encode(torch.from_numpy(x[i:i + batch_size]))[1].exp() for i in range(0, len(x), batch_size)]
    return torch.cat(parts).double().numpy()


def estimate_log_likelihood(
    model: torch.nn.Module, x: np.ndarray, n_samples: int, n_inner: int | None, batch_size: int,
    generator: torch.Generator | None = None, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x), ELBO) per row from the same S importance samples (vhp_core.estimators), float64: (N,) each."""
    ll, elbo = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), batch_size), desc="log-likelihood", disable=not progress, leave=False):
            batch = torch.from_numpy(x[i:i + batch_size])
            est = log_likelihood_and_elbo(model, batch, n_samples, n_inner=n_inner, generator=generator)
            ll.append(est.log_px.double().cpu().numpy())
            elbo.append(est.elbo.double().cpu().numpy())
    return (np.concatenate(ll), np.concatenate(elbo)) if ll else (np.zeros(0), np.zeros(0))


# Floats that one vmap(jacfwd) chunk may hold in decoder outputs and their tangents (8 MB in
# float32); conv decoders keep several times more in activations, so this bounds memory.
MF_CHUNK_FLOATS = 2**21


def mf_chunk_size(model: torch.nn.Module, requested: int) -> int:
    """Latent points per vmap(jacfwd) call: at most ``requested``, fewer for large outputs."""
    per_point = int(model.config.data_dim) * (int(model.config.latent_dim) + 1)
    return max(8, min(requested, MF_CHUNK_FLOATS // max(per_point, 1)))


def magnification(model: torch.nn.Module, z: np.ndarray, chunk: int) -> np.ndarray:
    """MF(z) of the decoder at latent points: (N,) float64."""
    dtype = next(model.parameters()).dtype
    return magnification_factor(model.decoder_mean_flat, torch.as_tensor(z, dtype=dtype),
                                mf_chunk_size(model, chunk)).double().numpy()


# --------------------------------------------------------------------------------------
# Data access
# --------------------------------------------------------------------------------------


def subset(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """All of range(n) (k <= 0 or k >= n), else a sorted draw of k of them."""
    return np.arange(n) if k <= 0 or k >= n else np.sort(rng.choice(n, k, replace=False))


def labels_of(split: Any) -> dict[str, np.ndarray]:
    """Every label array of a split (none for a split without labels)."""
    labels = getattr(split, "labels", {}) or {}
    return {str(name): np.asarray(labels[name][:]) for name in labels}


def colour_label(attrs: dict[str, Any], test_labels: dict[str, np.ndarray]) -> tuple[str | None, str, list[str] | None]:
    """(name, kind, class names) of the label the latent map is coloured by (None, 'continuous', None: none)."""
    colour = next((lab for lab in COLOUR_LABELS if lab in test_labels), None)
    if colour is None:
        return None, "continuous", None
    info = (attrs.get("labels") or {}).get(colour) or {}
    classes = info.get("classes")
    kind = str(info.get("kind", "categorical"))
    class_names = [str(c) for c in classes] if isinstance(classes, list) else None
    if kind == "categorical" and class_names is None:
        class_names = [str(c) for c in range(int(test_labels[colour].max()) + 1)]
    return colour, kind, class_names if kind == "categorical" else None


# --------------------------------------------------------------------------------------
# The one pass over the model
# --------------------------------------------------------------------------------------


def query_record(model: torch.nn.Module, dataset: Any, params: EvaluateParams, rng: np.random.Generator,
                 generator: torch.Generator, info: dict[str, Any], progress: bool = False) -> EvaluationRecord:
    """Ask ``model`` (in eval mode) everything the numbers and figures of ``dataset``'s test split need.

    ``info`` (JSON) starts the record's info: the metrics header and the figures' title.
    The draws from ``rng``, ``generator`` and the global torch RNG follow the module's order.
    """
    p, bs = params, params.batch_size
    x_test = test_inputs(dataset)
    # The test split: loss terms, then the log-likelihood on a subset (and at a second K_eval).
    loss_terms = mean_loss_terms(model, x_test, bs)
    ll_x = x_test[subset(len(x_test), p.ll_points, rng)]
    hierarchical = isinstance(model.prior, HierarchicalPrior)
    k_eval = p.ll_inner_samples if hierarchical else None
    log_px, ll_elbo = estimate_log_likelihood(model, ll_x, p.ll_samples, k_eval, bs, generator, progress)
    log_px_check = estimate_log_likelihood(model, ll_x, p.ll_samples, p.ll_inner_samples_check, bs, generator,
                                           progress)[0] if hierarchical else None
    log_std = getattr(model.likelihood, "log_std", None)
    # Codes of the test split and of a training subset (encoded as binary as the test data, for Bernoulli data).
    mu_test = encode_means(model, x_test, bs)
    var_test = encode_variances(model, x_test, bs)
    train_index = subset(int(dataset.train.x.shape[0]), p.max_train_points, rng)
    x_train = rows(dataset.train.x, train_index)
    reference = x_train.reshape(len(x_train), -1)  # grey levels for Bernoulli data: what decoded means resemble
    if dataset.likelihood == "bernoulli":
        x_train = (rng.random(x_train.shape) < x_train).astype(np.float32)
    mu_train = encode_means(model, x_train, bs)
    test_labels = labels_of(dataset.test)
    train_labels = {name: values[train_index] for name, values in labels_of(dataset.train).items()}
    trial, frame = test_labels.get("trial"), test_labels.get("frame")
    smoothness = (latent.smoothness_subset(len(mu_test), rng)
                  if trial is not None and frame is not None and latent.has_trajectory(trial) else None)
    # MF at the data and over the region they span.
    mf_data = magnification(model, mu_test[subset(len(mu_test), p.mf_points, rng)], p.mf_chunk)
    mf_span = magnification(model, latent.segment_samples(mu_test, p.mf_points, rng), p.mf_chunk)
    nn = latent.nn_subset(len(reference), rng) if len(reference) > 1 else None
    # The latent map: plotted points and MF on the plane's grid.
    plot_index = subset(len(mu_test), p.max_plot_points, rng)
    plane = LatentPlane.fit(mu_test)
    box = extent(plane.project(mu_test))
    mf_grid, _, _ = magnification_factor_grid(plane.decoder(model), (box[0], box[2]), (box[1], box[3]), p.grid_size,
                                              mf_chunk_size(model, p.mf_chunk), next(model.parameters()).dtype)
    attrs = dict(dataset.attrs)
    colour, colour_kind, class_names = colour_label(attrs, test_labels)
    pair_labels = test_labels[colour] if colour is not None and colour_kind == "categorical" else None
    pairs = latent.endpoint_pairs(len(mu_test), p.interp_pairs, rng, pair_labels)
    paths = _interpolations(model, mu_test, pairs, p, generator)
    # Reconstructions and prior samples.
    recon_index = np.sort(rng.choice(len(x_test), min(p.n_reconstructions, len(x_test)), replace=False))
    with torch.no_grad():
        z_prior = model.prior.sample(p.n_samples, generator=generator).double().numpy()
    info = {**info, "attrs": attrs, "x_shape": [int(s) for s in dataset.x_shape],
            "latent_dim": int(model.config.latent_dim), "colour": colour, "colour_kind": colour_kind,
            "class_names": class_names, "loss_terms": loss_terms, "ll_inner_samples": k_eval,
            # the Gaussian decoder's sigma these numbers were scored with (None: Bernoulli)
            "ll_sigma": None if log_std is None else float(log_std.detach().double().mean().exp())}
    return EvaluationRecord(
        params=p, info=info, log_px=log_px, ll_elbo=ll_elbo, log_px_check=log_px_check,
        mu_test=mu_test, var_test=var_test, test_labels=test_labels, mu_train=mu_train, train_labels=train_labels,
        reference=reference, smoothness_subset=smoothness, nn_subset=nn, mf_data=mf_data, mf_span=mf_span,
        plot_index=plot_index, extent=np.asarray(box), mf_grid=mf_grid.double().numpy(), **paths,
        recon_x=x_test[recon_index].reshape(len(recon_index), -1),
        recon=decode_means(model, mu_test[recon_index], bs), prior_x=decode_means(model, z_prior, bs))


def _interpolations(model: torch.nn.Module, mu_test: np.ndarray, pairs: np.ndarray, params: EvaluateParams,
                    generator: torch.Generator) -> dict[str, Any]:
    """Graph path and straight line between each pair of encoded test points (METHOD section 6).

    The graph's nodes are prior samples and the pairs' ends; its neighbours are chosen
    among whitened nodes, its edges weigh data-space distances. Each path and line is
    decoded and its MF measured; the path is refined segment by segment first.
    """
    with torch.no_grad():
        prior_nodes = model.prior.sample(params.graph_nodes, generator=generator).double().numpy()
    ends = np.unique(pairs.reshape(-1))
    nodes = np.concatenate([prior_nodes, mu_test[ends]])
    node_of = {int(e): len(prior_nodes) + i for i, e in enumerate(ends)}
    whiten = latent.Whitening.fit(mu_test)
    graph = latent.knn_graph(whiten(nodes), decode_means(model, nodes, params.batch_size), params.graph_k)
    out: dict[str, Any] = {"pairs": pairs, "nodes": nodes, **{name: [] for name in _LISTS}}
    for a, b in pairs:
        line_z = latent.straight_line(mu_test[a], mu_test[b], params.line_steps)
        path = latent.graph_shortest_path(graph, node_of[int(a)], node_of[int(b)])
        path_z = nodes[path] if path is not None else np.zeros((0, nodes.shape[1]))
        graph_z = latent.refine_polyline(path_z, params.segment_steps) if path is not None else path_z
        for kind, z in (("line", line_z), ("graph", graph_z)):
            out[f"{kind}_z"].append(z)
            out[f"{kind}_x"].append(decode_means(model, z, params.batch_size))
            out[f"{kind}_mf"].append(magnification(model, z, params.mf_chunk) if len(z) else np.zeros(0))
        out["path_z"].append(path_z)
    return out


# --------------------------------------------------------------------------------------
# record.npz
# --------------------------------------------------------------------------------------


def save_record(path: Path, record: EvaluationRecord) -> Path:
    """Write the record as one .npz (its arrays, and the params and info as JSON), atomically."""
    arrays: dict[str, np.ndarray] = {"_json": np.asarray(json.dumps({
        "format": RECORD_FORMAT, "params": dataclasses.asdict(record.params), "info": record.info}))}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name in ("params", "info") or value is None:
            continue
        if field.name in _DICTS:
            arrays.update({f"{field.name}.{k}": np.asarray(v) for k, v in value.items()})
        elif field.name in _LISTS:
            arrays.update({f"{field.name}.{i}": np.asarray(v) for i, v in enumerate(value)})
        else:
            arrays[field.name] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write(Path(path), buffer.getbuffer())


def load_record(path: Path) -> EvaluationRecord:
    """The record `save_record` wrote (no pickled objects are read)."""
    with np.load(Path(path), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    head = json.loads(str(arrays.pop("_json")))
    if head.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path}: record format {head.get('format')!r}, expected {RECORD_FORMAT}")
    values: dict[str, Any] = {"params": EvaluateParams(**head["params"]), "info": head["info"]}
    values.update({name: {} for name in _DICTS})
    lists: dict[str, dict[int, np.ndarray]] = {name: {} for name in _LISTS}
    for key, array in arrays.items():
        name, _, part = key.partition(".")
        if name in _DICTS:
            values[name][part] = array
        elif name in _LISTS:
            lists[name][int(part)] = array
        else:
            values[name] = array
    values.update({name: [items[i] for i in sorted(items)] for name, items in lists.items()})
    for field in dataclasses.fields(EvaluationRecord):
        values.setdefault(field.name, None)
    return EvaluationRecord(**values)
