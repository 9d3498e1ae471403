"""Turning rendered dicts into file text and files: YAML with a header note, and writing it.

Every rendered file starts with the same note saying where it came from, so nobody edits the
output instead of the config.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from config.loader import Project


def rendered_note(project: Project) -> str:
    """The header line of every rendered file: its source config and how to re-render it."""
    try:
        source = project.path.relative_to(project.root).as_posix()
    except ValueError:
        source = project.path.name
    return f"Rendered from {source} by `driftloop render`; edit the config, not this file."


def write_text(path: Path, text: str) -> Path:
    """Write `text` to `path`, creating its directory; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class BlockDumper(yaml.SafeDumper):
    """Block style for multi-line strings, so rule expressions read as written; no anchors."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


BlockDumper.add_representer(str, _represent_str)


def yaml_text(data: dict, note: str) -> str:
    """`data` as YAML in the order given, headed by `note` as comment lines."""
    header = "".join(f"# {line.removeprefix('# ')}\n" for line in note.splitlines())
    body = yaml.dump(data, Dumper=BlockDumper, sort_keys=False, width=4096, allow_unicode=True)
    return header + body
