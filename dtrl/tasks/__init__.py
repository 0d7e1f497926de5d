"""Layer 1: the task registry (names, reference scores, RTG targets, dataset ids) and its definitions.

``from dtrl.tasks import get_task`` is the public entry point. Data only: no env is built here.
"""

from dtrl.tasks import robotics as _robotics
from dtrl.tasks.registry import (  # noqa: F401  (the public API)
    QUALITIES, REF_MEASUREMENTS, EnvFamily, Task, UnknownTaskError, get_family, get_task, known_families,
    known_tasks, register_family, register_task, with_overrides,
)

# Adroit and AntMaze (gymnasium-robotics, the `robotics` extra): their definitions and citations.
_robotics.register_all(register_family, register_task)
