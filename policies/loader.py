"""Reading policy files: YAML in, a validated `Policy` or every problem with its line out.

Operators fix policies by line number, so validation errors are mapped back onto the
YAML node that caused them (or the nearest enclosing one when a field is missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from policies.model import Policy


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


def _node_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
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


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy text; raise `PolicyError` listing every problem with its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [PolicyProblem("", line, f"YAML syntax: {problem}")]) from exc
    if not isinstance(data, dict):
        raise PolicyError(source, [PolicyProblem("", 1, "a policy must be a YAML mapping")])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            path = ".".join(str(p) for p in loc)
            problems.append(PolicyProblem(path, _node_line(root, loc), err["msg"]))
        raise PolicyError(source, problems) from exc


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(str(p), [PolicyProblem("", None, f"cannot read: {exc}")]) from exc
    return parse_policy(text, str(p))
