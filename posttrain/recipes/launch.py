"""Opening a training stage in one process or under torchrun, for every training recipe.

One process: exactly ``open_stage``. Under torchrun (WORLD_SIZE > 1) the process
group is joined first, rank 0 alone builds the tiny base model while the others
wait (so no two processes write it), every rank loads the model, and the model is
wrapped for DDP or sharded with FSDP2 as ``dist.strategy`` says. A sharded
checkpoint holds no Hugging Face weights: the stage then starts from the base
weights and ``load_trainer_state`` loads the shards once the model is wrapped.
"""

from __future__ import annotations

import torch

from posttrain.config import Config
from posttrain.errors import ConfigError
from posttrain.recipes.common import Loader, Stage, model_dir, open_stage, setup
from posttrain.rollout.factory import check_engine
from posttrain.train import distributed
from posttrain.train.checkpoint import is_sharded, latest_checkpoint


def open_training(cfg: Config, resume: bool, loader: Loader | None = None) -> tuple[Stage, torch.nn.Module]:
    """The stage, and the module training forwards go through (the stage's model in one process)."""
    distributed.init(cfg.dist, cfg.model.device)
    ckpt = latest_checkpoint(cfg.out / "checkpoints") if resume else None
    if not distributed.active():
        if is_sharded(ckpt):
            raise ConfigError(
                "a sharded checkpoint (dist.checkpoint=sharded): resume it under torchrun",
                file=str(ckpt),
            )
        stage = open_stage(cfg, resume, loader)
        return stage, stage.model
    check_engine(cfg, distributed=True)  # an engine that serves one trainer process: refused before any model loads
    if distributed.is_main():
        setup(cfg)  # quiets transformers before the tiny model is built, as in one process
        model_dir(cfg)  # builds runs/<name>/base when model.path is unset
    distributed.barrier()
    stage = open_stage(cfg, resume and not is_sharded(ckpt), loader)
    if is_sharded(ckpt):
        stage = stage._replace(ckpt=ckpt)
    return stage, distributed.wrap(stage.model, cfg.dist)
