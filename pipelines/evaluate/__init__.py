"""The evaluate stage: log-likelihood, ELBO and the latent-space metrics of one trained model, with its figures."""
