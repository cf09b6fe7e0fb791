"""Datasets: the episode schema, shard files, versioned manifests, ingestion and the training loader.

- `schema`: `Episode`, the unit every source is converted into (and `validate`).
- `shards`: the shard file (uncompressed, pickle-free `.npz`, memory-mapped on read).
- `manifest`: the JSON manifest of a dataset version and the statistics derived from it.
- `dataset`: versioned, immutable datasets on a store (`open_dataset`, `list_versions`, `DatasetRef`).
- `sources`: readers for Minari datasets and `.npz` / HDF5 episode files.
- `ingest`: validate episodes, write shards, publish the next version (`ingest`).
- `loader`: deterministic, resumable, rank-partitioned n-step `Transition` batches (`build_loader`).

Submodules are imported explicitly (`from pac.data.loader import build_loader`) so that reading a
manifest does not import torch.
"""
