"""Datasets for bnnlab: MNIST-style IDX files (found locally or downloaded) and built-in sets
generated on the fly (2-D point sets and synthetic digits).

>>> from bnnlab.data import load_dataset
>>> ds = load_dataset("circle", seed=1)
>>> ds.input_shape, ds.num_classes
((2,), 2)
"""

from .dataset import Dataset, DatasetError, DatasetInfo
from .idx import read_idx, write_idx
from .registry import cache_root, dataset_info, dataset_names, load_dataset

__all__ = [
    "Dataset", "DatasetError", "DatasetInfo", "cache_root", "dataset_info", "dataset_names",
    "load_dataset", "read_idx", "write_idx",
]
