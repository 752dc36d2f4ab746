"""The fetch and prepare stages: raw data -> data/processed/<name>.zarr (the parsing lives in preprocessing/)."""
