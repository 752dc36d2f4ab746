"""The model registry: every compared model (METHOD §5) declared once, with what its name decides.

`MODELS` maps a model name to its `ModelSpec`: the class in `vhp_core.models` that
builds it, its lambda rule (METHOD §4), whether it has the learned hierarchical prior
of METHOD §2, and a one-line summary for help texts. `MODEL_NAMES`,
`HIERARCHICAL_MODELS` and `constraint_rule` are derived from it; `ModelConfig`
validates names against it and `build_model` finds the class through it. Adding a
model is one entry here (and its class in models.py, if it needs a new one).

The class is named, not imported: models.py builds on `ModelConfig`, which checks names
against this table, so the table sits below both (and stays torch-free).
"""

from __future__ import annotations

from dataclasses import dataclass

from .choices import Rule


@dataclass(frozen=True)
class ModelSpec:
    """What a model name decides.

    model_class: the name of the `vhp_core.models` class that builds it.
    rule: the lambda rule ('rewo' | 'geco' | 'none').
    hierarchical: the learned prior p(z) = int p_Theta(z|zeta) p(zeta) dzeta of METHOD §2.
    summary: one line for help texts.
    """

    model_class: str
    rule: Rule
    hierarchical: bool
    summary: str


MODELS: dict[str, ModelSpec] = {
    "vhp": ModelSpec("VHPVAE", "rewo", True, "hierarchical prior, REWO"),
    "vhp-iw": ModelSpec("VHPIWVAE", "rewo", True,
                        "hierarchical prior under an outer importance-weighted bound (k_iw samples), REWO"),
    "vhp-geco": ModelSpec("VHPVAE", "geco", True, "hierarchical prior, GECO"),
    "iwae": ModelSpec("IWAE", "none", False, "N(0, I) prior, importance-weighted bound (k_iw samples)"),
    "vae": ModelSpec("VAE", "none", False, "N(0, I) prior, ELBO"),
    "vamp": ModelSpec("VampVAE", "none", False, "VampPrior (n_pseudo pseudo-inputs), ELBO"),
}

MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
HIERARCHICAL_MODELS: tuple[str, ...] = tuple(name for name, spec in MODELS.items() if spec.hierarchical)


def model_spec(model_name: str) -> ModelSpec:
    """The registry entry of `model_name`; ValueError for a name it does not hold."""
    try:
        return MODELS[model_name]
    except KeyError:
        raise ValueError(f"unknown model name {model_name!r} (known: {', '.join(MODEL_NAMES)})") from None


def constraint_rule(model_name: str) -> Rule:
    """The lambda rule of a model: 'rewo' (vhp, vhp-iw), 'geco' (vhp-geco) or 'none' (iwae, vae, vamp)."""
    return model_spec(model_name).rule
