"""The factory file: many production lines sharing one day's energy, tokens and trial slots.

A line is an ordinary policy file; the factory file lists them with what the operator decides
*between* lines (priority, guaranteed share, weight, owning team) and the facility's own
limits. Loading reads every file and reports every problem in one error, each with the file,
field and line it is about, so an operator fixes a whole factory in one pass.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from policies.loader import (
    YAML_AT,
    PolicyError,
    PolicyProblem,
    compose_mapping,
    load_policy,
    node_line,
    parse_policy,
    validation_problems,
)
from policies.model import Policy, _Strict


class FactoryLimits(_Strict):
    """Facility-wide daily limits shared by all lines; None: the factory sets no limit on it
    (each line's own policy budgets still hold)."""

    energy_kwh_per_day: float | None = Field(default=None, gt=0)
    training_tokens_per_day: int | None = Field(default=None, gt=0)
    facility_power_cap_w: float | None = Field(
        default=None, gt=0, description="Sum of GPU power limits across all running trials."
    )
    slots: int = Field(default=1, ge=1, description="Trials that may run at once, all lines.")


class LineSpec(_Strict):
    """One line of the factory: its policy file and its standing against the other lines."""

    policy: str = Field(min_length=1, description="Policy file, relative to the factory file.")
    priority: int = Field(default=0, description="Higher is served first when budgets are short.")
    guarantee_pct: float = Field(
        default=0.0, ge=0, le=100, description="Share of the factory's daily limits kept for it."
    )
    weight: float = Field(default=1.0, gt=0, description="Share within its priority tier.")
    owner: str = Field(min_length=1, description="Team charged for the line's work.")

    @field_validator("owner")
    @classmethod
    def _named(cls, owner: str) -> str:
        if not owner.strip():
            raise ValueError("owner must name a team")
        return owner


class FactoryPolicy(_Strict):
    """The factory file as written: a name, facility limits and the lines."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    limits: FactoryLimits = Field(default_factory=FactoryLimits)
    lines: list[LineSpec] = Field(min_length=1)

    @field_validator("lines")
    @classmethod
    def _lines_fit(cls, lines: list[LineSpec]) -> list[LineSpec]:
        seen: dict[str, int] = {}
        for i, line in enumerate(lines):
            key = posixpath.normpath(line.policy)
            if key in seen:
                raise _located(
                    f"{line.policy} is listed twice (also lines.{seen[key]}.policy)", (i, "policy")
                )
            seen[key] = i
        total = sum(line.guarantee_pct for line in lines)
        if total > 100 + 1e-9:
            shares = ", ".join(f"{line.policy} {line.guarantee_pct:g}%" for line in lines)
            raise _located(f"guarantees add up to {total:g}%, more than 100% ({shares})", ())
        return lines

    def canonical_json(self) -> str:
        """Stable text form; the factory version is its hash."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def version(self) -> str:
        """The hash of the canonical form: computed once (the model is frozen)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


def _located(message: str, at: tuple[int | str, ...]) -> PydanticCustomError:
    """A validator error that points below its field (see `policies.loader.YAML_AT`)."""
    return PydanticCustomError("factory_lines", "{detail}", {"detail": message, YAML_AT: at})


@dataclass(frozen=True)
class FactoryLine:
    """A loaded line: what the factory file says about it and its validated policy."""

    spec: LineSpec
    path: Path  # resolved
    policy: Policy

    @property
    def name(self) -> str:
        return self.policy.name


@dataclass(frozen=True)
class Factory:
    """A loaded factory; `path` is None for the one-line factory of a plain policy file."""

    spec: FactoryPolicy
    path: Path | None
    lines: tuple[FactoryLine, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(line.name for line in self.lines)

    def line(self, name: str) -> FactoryLine:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(f"no line {name!r} in factory {self.name} (lines: {', '.join(self.names)})")


@dataclass(frozen=True)
class FactoryProblem(PolicyProblem):
    """A problem in one of a factory's files."""

    file: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {PolicyProblem.__str__(self)}"


class FactoryError(PolicyError):
    """A factory that cannot be used; `problems` lists every file, field, line and reason."""

    problems: list[FactoryProblem]

    def __init__(self, source: str, problems: list[FactoryProblem]) -> None:
        super().__init__(source, list(problems))


def _in_file(file: str, problems: list[PolicyProblem]) -> list[FactoryProblem]:
    return [FactoryProblem(p.path, p.line, p.message, file=file) for p in problems]


def load_factory(path: str | Path) -> Factory:
    """Read a factory file and every line's policy; raise `FactoryError` with all problems."""
    p = Path(path)
    source = str(p)
    try:
        root, data = compose_mapping(p.read_text(encoding="utf-8"), source, "factory file")
    except (OSError, UnicodeDecodeError) as exc:
        raise FactoryError(
            source, [FactoryProblem("", None, f"cannot read: {exc}", source)]
        ) from exc
    except PolicyError as exc:
        raise FactoryError(source, _in_file(source, exc.problems)) from exc
    problems: list[FactoryProblem] = []
    spec: FactoryPolicy | None = None
    try:
        spec = FactoryPolicy.model_validate(data)
    except ValidationError as exc:
        problems += _in_file(source, validation_problems(exc, root))
    loaded, line_problems = _load_lines(p, root, data)
    problems += line_problems
    if problems or spec is None:
        problems.sort(key=lambda q: (q.file != source, q.file, q.line or 0))
        raise FactoryError(source, problems)
    lines = tuple(FactoryLine(s, *loaded[i]) for i, s in enumerate(spec.lines))
    return Factory(spec=spec, path=p, lines=lines)


def _line_refs(data: dict[str, Any]) -> list[tuple[int, str]]:
    """(index, policy path) of every line entry that names a file, valid or not otherwise."""
    entries = data.get("lines")
    if not isinstance(entries, list):
        return []
    return [
        (i, e["policy"])
        for i, e in enumerate(entries)
        if isinstance(e, dict) and isinstance(e.get("policy"), str) and e["policy"]
    ]


def _load_lines(
    factory: Path, root: yaml.Node | None, data: dict[str, Any]
) -> tuple[dict[int, tuple[Path, Policy]], list[FactoryProblem]]:
    """Each listed policy, by line index; a file that cannot be read is the factory's problem."""
    loaded: dict[int, tuple[Path, Policy]] = {}
    shown: dict[int, str] = {}
    problems: list[FactoryProblem] = []
    for i, ref in _line_refs(data):
        file = Path(posixpath.normpath(factory.parent / ref))
        shown[i] = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            at = ("lines", i, "policy")
            why = f"cannot read the line's policy file {file}: {getattr(exc, 'strerror', exc)}"
            problems.append(
                FactoryProblem(f"lines.{i}.policy", node_line(root, at), why, file=str(factory))
            )
            continue
        try:
            loaded[i] = (file.resolve(), parse_policy(text, str(file)))
        except PolicyError as exc:
            problems += _in_file(str(file), exc.problems)
    problems += _duplicate_names(factory, root, loaded, shown)
    return loaded, problems


def _duplicate_names(
    factory: Path,
    root: yaml.Node | None,
    loaded: dict[int, tuple[Path, Policy]],
    shown: dict[int, str],
) -> list[FactoryProblem]:
    """Everything in the store is keyed by policy name, so two lines must not share one."""
    by_name: dict[str, list[int]] = defaultdict(list)
    for i in sorted(loaded):
        by_name[loaded[i][1].name].append(i)
    problems = []
    for name, indices in by_name.items():
        first = indices[0]
        for i in indices[1:]:
            if shown[i] == shown[first]:
                continue  # the same file listed twice: the factory file's own check says so
            problems.append(
                FactoryProblem(
                    f"lines.{i}.policy",
                    node_line(root, ("lines", i, "policy")),
                    f"line name {name!r} is used by both {shown[first]} (lines.{first}) and "
                    f"{shown[i]} (lines.{i}); each line's policy needs a name of its own",
                    file=str(factory),
                )
            )
    return problems


def single_line_factory(policy_path: str | Path) -> Factory:
    """`--policy FILE`: a factory of that one line, with no factory limits and as many slots
    as the line runs trials at once (``tuning.parallel_trials``)."""
    p = Path(policy_path)
    policy = load_policy(p)
    spec = FactoryPolicy(
        name=policy.name,
        lines=[LineSpec(policy=str(p), owner="default")],
        limits=FactoryLimits(slots=policy.tuning.parallel_trials),
    )
    return Factory(spec=spec, path=None, lines=(FactoryLine(spec.lines[0], p.resolve(), policy),))


def is_factory_file(path: str | Path) -> bool:
    """A factory file is a YAML mapping with `lines`; anything else is read as a policy."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "lines" in data


def factory_json_schema() -> dict[str, Any]:
    return FactoryPolicy.model_json_schema()


__all__ = [
    "Factory",
    "FactoryError",
    "FactoryLimits",
    "FactoryLine",
    "FactoryPolicy",
    "FactoryProblem",
    "LineSpec",
    "factory_json_schema",
    "is_factory_file",
    "load_factory",
    "single_line_factory",
]
