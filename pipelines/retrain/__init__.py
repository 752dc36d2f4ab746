"""The scheduled retraining flow: rerun the pipeline when DVC says something changed; promote only a better model."""
