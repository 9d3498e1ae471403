"""driftloop's one source of truth: `config/driftloop.yaml`, parsed once into typed sections."""

from config.loader import ConfigError, Project, check_columns, load_project
from config.schema import DriftloopConfig

__all__ = ["ConfigError", "DriftloopConfig", "Project", "check_columns", "load_project"]
