"""Run configurations: YAML files in this folder, loaded into frozen typed dataclasses.

`configs.load(path, overrides=("train.batch_size=64", ...)) -> RunConfig`; unknown keys and every rule that
needs only the config raise `configs.ConfigError` naming the key and the rule, when the config is built.

Modules:
  schema.py     the sections as frozen dataclasses, each checking its own values; the parts take them
                as they are (AugmentConfig is the pipeline's augmentation, GeomConfig the head's)
  rules.py      the rules a key shares with a part that takes the same value as an argument (data.shards,
                data.weights, data.hw_decoder_load: the pipeline's loader checks them for callers without a config)
  loader.py     YAML plus `key=value` overrides -> RunConfig, and back to plain dicts
  reference.py  docs/configuration.md's config table, generated from schema.py's comments
  *.yaml        the shipped configs (the AdaDistill paper's, the AdaFace-KD code's, the demo's)
"""
from configs.loader import dump, field_type, from_dict, load, to_dict
from configs.schema import (AugmentConfig, ConfigError, DataConfig, DistillConfig, EvalConfig, GeomConfig, ModelConfig,
                            RunConfig, StudentConfig, TeacherConfig, TrainConfig)

__all__ = ["load", "to_dict", "from_dict", "dump", "field_type", "ConfigError", "RunConfig", "DataConfig", "AugmentConfig",
           "ModelConfig", "StudentConfig", "TeacherConfig", "DistillConfig", "GeomConfig", "TrainConfig", "EvalConfig"]
