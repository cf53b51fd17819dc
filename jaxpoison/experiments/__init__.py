"""Jobs and pipelines that tie the library together (the top layer): presets, the staged
poison → train → detect → unlearn run, its report and plots, the arena of every attack against every
detector and unlearner, and the training job."""

from jaxpoison.experiments.arena import ARENA_PRESETS, ArenaError, ArenaSpec, load_spec, plan_arena, run_arena
from jaxpoison.experiments.config import (
    AttackConfig,
    ConfigError,
    DataConfig,
    DetectionConfig,
    RunConfig,
    UnlearnConfig,
    VictimConfig,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
)
from jaxpoison.experiments.pipeline import Prepared, detect_stage, prepare, run_pipeline, unlearn_stage
from jaxpoison.experiments.presets import PRESETS, get_preset
from jaxpoison.experiments.store import RunDirectoryError, RunStore
from jaxpoison.experiments.train_job import DEFAULT_RECIPE, default_recipe, run_train_job

__all__ = [
    "ARENA_PRESETS",
    "DEFAULT_RECIPE",
    "PRESETS",
    "ArenaError",
    "ArenaSpec",
    "AttackConfig",
    "ConfigError",
    "DataConfig",
    "DetectionConfig",
    "Prepared",
    "RunConfig",
    "RunDirectoryError",
    "RunStore",
    "UnlearnConfig",
    "VictimConfig",
    "apply_overrides",
    "default_recipe",
    "detect_stage",
    "from_dict",
    "get_preset",
    "load_config",
    "load_spec",
    "plan_arena",
    "prepare",
    "run_arena",
    "run_pipeline",
    "run_train_job",
    "to_dict",
    "unlearn_stage",
]
