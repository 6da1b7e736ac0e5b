"""Run configurations: YAML files in this folder, loaded into frozen typed dataclasses.

`configs.load(path, overrides=("train.batch_size=64", ...)) -> RunConfig`; unknown keys raise
`configs.ConfigError` naming the key.
"""
from configs.loader import dump, field_type, from_dict, load, to_dict
from configs.schema import (AugmentConfig, ConfigError, DataConfig, DistillConfig, EvalConfig, GeomConfig, ModelConfig,
                            RunConfig, TeacherConfig, TrainConfig)

__all__ = ["load", "to_dict", "from_dict", "dump", "field_type", "ConfigError", "RunConfig", "DataConfig", "AugmentConfig",
           "ModelConfig", "TeacherConfig", "DistillConfig", "GeomConfig", "TrainConfig", "EvalConfig"]
