"""Mixing datasets: `data.qualities` selects within `data.dataset`; the datasets of `data.mix_with` come whole."""

from __future__ import annotations

from pathlib import Path

from pac.config import Config
from pac.data.ingest import ingest
from pac.data.mixture import MixtureSource, build_source
from pac.data.schema import Episode


def test_quality_selection_applies_to_the_main_dataset_only(mixed_episodes: list[Episode], episode_factory,
                                                            tmp_path: Path) -> None:
    cfg = Config()
    cfg.storage.root = str(tmp_path / "store")
    cfg.train.micro_batch_size = 8
    main = ingest(mixed_episodes, "main", storage=cfg.storage, progress=False)
    collected = ingest([episode_factory(seed=i, quality="policy") for i in range(3)], "collected",
                       storage=cfg.storage, progress=False)
    cfg.data.dataset, cfg.data.qualities, cfg.data.mix_with = str(main), ["expert"], {str(collected): 1.0}
    source = build_source(cfg)
    assert isinstance(source, MixtureSource)
    for loader, wanted in zip(source.loaders, ({"expert"}, {"policy"}), strict=True):
        shards = loader.dataset.manifest.shards
        assert {shards[s].labels()[e] for s, e in loader.episodes()} == wanted
    assert source.batch(0).batch_size == 8
