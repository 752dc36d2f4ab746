"""Raw data -> processed zarr groups (``data/processed/<dataset>.zarr``).

One module a data set (``mocap``, ``faces``, ``fashion_mnist``), each with a
frozen params dataclass whose fields are its params.yaml section and
``prepare(params, out, progress=True)``; ``store`` holds the zarr contract
(``open_dataset``, ``write_dataset``). Every input problem raises a subclass of
``PreprocessingError`` naming the file (and line or frame) and the problem
(``preprocessing.errors``). The package imports nothing itself: a command that needs
only the errors does not load zarr.
"""
