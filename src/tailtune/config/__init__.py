"""The run configuration: the schema (dataclasses), composing it from presets, files and
overrides, and the packaged presets (``config/presets/{recipes,data}``).

Everything a caller needs is importable from here: ``from tailtune.config import load_config``.
"""

from tailtune.config.load import (  # noqa: F401
    DATA_PROTOCOL_KEYS,
    RECIPE_BASE,
    RECIPE_FIELDS,
    RECIPE_META,
    SHORTHANDS,
    RecipeSource,
    from_yaml_text,
    list_presets,
    load_config,
    merge_layers,
    preset_comment,
    read_recipe,
    to_dict,
    to_yaml,
    unchosen_overrides,
)
from tailtune.config.options import options_of, schema, section, unchosen_options  # noqa: F401
from tailtune.config.schema import (  # noqa: F401  (the sections, their choices and checks)
    _BLOCKS_HELP,
    BN_MODES,
    CACHE_MODES,
    CALIBRATIONS,
    DEFAULT_PROMPT,
    EVAL_PRECISIONS,
    HOLDOUT_POLICIES,
    ON_NAN_MODES,
    PATH_KEYS,
    PRECISIONS,
    VAL_MODES,
    Config,
    DataConfig,
    EvalConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    PeftConfig,
    TrainConfig,
    _check_choice,
    _check_positive,
    _check_registered,
    _largest_divisor,
    parse_blocks,
    registered_choices,
    setting,
    total_epochs,
    with_absolute_paths,
)
