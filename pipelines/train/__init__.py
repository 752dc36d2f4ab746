"""The train stage: open a prepared zarr group, build a model, fit it with REWO or its bound, write models/<dataset>/<model>."""
