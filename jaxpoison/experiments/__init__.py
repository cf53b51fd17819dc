"""Jobs and pipelines that tie the library together (the top layer)."""

from jaxpoison.experiments.train_job import DEFAULT_RECIPE, default_recipe, run_train_job

__all__ = ["DEFAULT_RECIPE", "default_recipe", "run_train_job"]
