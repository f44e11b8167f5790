"""Reading policy files: YAML in, a validated `Policy` or every problem with its line out.

Operators fix policies by line number, so validation errors are mapped back onto the
YAML node that caused them (or the nearest enclosing one when a field is missing). The
mapping is shared with factory files (`policies.factory`), which list many policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies.model import Policy

YAML_AT = "yaml_at"
"""Key of a validator error's context that names the node below its field (e.g. `(2, "policy")`),
so a check on a whole list can point at the item it is about."""


@dataclass(frozen=True)
class PolicyProblem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "line ?"
        return f"{where}: {self.path or '<root>'}: {self.message}"


class PolicyError(ValueError):
    """A policy that cannot be used; `problems` lists each field, line and reason."""

    def __init__(self, source: str, problems: list[PolicyProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def node_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest YAML node that `loc` reaches."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part),
                None,
            )
            if match is None:
                continue  # discriminator tags and missing fields: stay on the parent
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            continue
        line = node.start_mark.line + 1
    return line


def compose_mapping(
    text: str, source: str, what: str = "policy"
) -> tuple[yaml.Node | None, dict[str, Any]]:
    """Parse YAML text into (node tree for line numbers, data); it must be a mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [PolicyProblem("", line, f"YAML syntax: {problem}")]) from exc
    if not isinstance(data, dict):
        raise PolicyError(source, [PolicyProblem("", 1, f"a {what} must be a YAML mapping")])
    return root, data


def validation_problems(exc: ValidationError, root: yaml.Node | None) -> list[PolicyProblem]:
    """Each pydantic error as a problem at its field's YAML line."""
    problems = []
    for err in exc.errors(include_url=False):
        at = tuple((err.get("ctx") or {}).get(YAML_AT, ()))
        loc = tuple(err["loc"]) + at
        path = ".".join(str(p) for p in loc)
        problems.append(PolicyProblem(path, node_line(root, loc), err["msg"]))
    return problems


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy text; raise `PolicyError` listing every problem with its line."""
    root, data = compose_mapping(text, source)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, validation_problems(exc, root)) from exc


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(str(p), [PolicyProblem("", None, f"cannot read: {exc}")]) from exc
    return parse_policy(text, str(p))
