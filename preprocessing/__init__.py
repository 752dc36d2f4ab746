"""Raw data -> processed zarr groups (``data/processed/<dataset>.zarr``).

One module a data set (``mocap``, ``faces``, ``fashion_mnist``), each with a
frozen params dataclass whose fields are its params.yaml section and
``prepare(params, out, progress=True)``; ``store`` holds the zarr contract
(``open_dataset``, ``write_dataset``). Every input problem raises a subclass of
``PreprocessingError`` naming the file (and line or frame) and the problem.
"""

from preprocessing.errors import (
    DatasetError,
    ImageFormatError,
    MeshFormatError,
    MocapFormatError,
    PreprocessingError,
    SourceError,
)
from preprocessing.store import SCHEMA_VERSION, Dataset, Split, open_dataset, write_dataset

__all__ = [
    "PreprocessingError",
    "DatasetError",
    "SourceError",
    "MocapFormatError",
    "MeshFormatError",
    "ImageFormatError",
    "SCHEMA_VERSION",
    "Dataset",
    "Split",
    "open_dataset",
    "write_dataset",
]
