"""Layer 2: the one config family. ``base`` holds the typed-dataclass machinery (``from dtrl.config import
from_dict, doc, ConfigError``); each section has its module (model, data, online, pretrain, workflow) and
``experiment`` assembles them; ``registry`` maps method names to their classes; ``device`` resolves `auto`.
"""

from dtrl.config.base import (  # noqa: F401  (the public API)
    ConfigError, doc, field_default, field_docs, from_dict, load_yaml, require, to_dict, with_defaults,
)
