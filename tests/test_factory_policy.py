"""Factory files: every problem in every file comes back with its file, field and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli import main
from policies import PolicyError
from policies.factory import (
    FactoryError,
    FactoryPolicy,
    factory_json_schema,
    is_factory_file,
    load_factory,
    single_line_factory,
)

ROOT = Path(__file__).parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def lines(tmp_path: Path) -> Path:
    """Two valid line policies under tmp_path/lines."""
    write(tmp_path / "lines" / "a.yaml", "name: a\n")
    write(tmp_path / "lines" / "b.yaml", "name: b\nbudgets:\n  tokens_per_trial: 1000\n")
    return tmp_path


GOOD = """\
name: f
limits:
  energy_kwh_per_day: 3.0
  training_tokens_per_day: 50000000
  slots: 2
lines:
  - policy: lines/a.yaml
    priority: 10
    guarantee_pct: 40
    owner: team-a
  - policy: lines/b.yaml
    weight: 2.5
    owner: team-b
"""


def problems(err: pytest.ExceptionInfo[FactoryError]) -> set[tuple[str, str, int | None]]:
    return {(Path(p.file).name, p.path, p.line) for p in err.value.problems}


def test_valid_factory_loads_every_line(lines: Path) -> None:
    factory = load_factory(write(lines / "f.yaml", GOOD))
    assert factory.name == "f" and factory.names == ("a", "b")
    assert factory.spec.limits.slots == 2 and factory.spec.limits.facility_power_cap_w is None
    a, b = factory.line("a"), factory.line("b")
    assert (a.spec.priority, a.spec.guarantee_pct, a.spec.owner) == (10, 40, "team-a")
    assert (b.spec.priority, b.spec.guarantee_pct, b.spec.weight) == (0, 0, 2.5)
    assert b.path == (lines / "lines" / "b.yaml").resolve() and b.path.is_absolute()
    assert b.policy.budgets.tokens_per_trial == 1000
    assert factory.path == lines / "f.yaml"
    with pytest.raises(KeyError, match="no line 'zz'"):
        factory.line("zz")


def test_paths_are_relative_to_the_factory_file(
    lines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(lines / "f.yaml", GOOD)
    monkeypatch.chdir("/")
    assert load_factory(path).names == ("a", "b")


def test_version_is_the_content_hash(lines: Path) -> None:
    a = load_factory(write(lines / "f.yaml", GOOD)).spec.version
    b = load_factory(write(lines / "f.yaml", "# comment\n" + GOOD)).spec.version
    c = load_factory(write(lines / "f.yaml", GOOD.replace("slots: 2", "slots: 3"))).spec.version
    assert a == b != c and len(a) == 16


def test_unknown_key_in_factory_file(lines: Path) -> None:
    text = GOOD.replace("  slots: 2\n", "  slots: 2\n  slotz: 3\n")
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", text))
    assert problems(err) == {("f.yaml", "limits.slotz", 6)}
    assert isinstance(err.value, PolicyError)
    assert f"{lines / 'f.yaml'}: line 6: limits.slotz: Extra inputs" in str(err.value)


def test_bad_field_in_a_line_is_reported_in_that_file(lines: Path) -> None:
    bad = write(lines / "lines" / "b.yaml", "name: b\nbudgets:\n  tokens_per_trial: -1\n")
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", GOOD))
    (problem,) = err.value.problems
    assert (problem.file, problem.path, problem.line) == (str(bad), "budgets.tokens_per_trial", 3)
    assert f"{bad}: line 3: budgets.tokens_per_trial:" in str(err.value)


def test_missing_line_file_is_a_problem_of_the_factory_file(lines: Path) -> None:
    text = GOOD.replace("lines/b.yaml", "lines/nope.yaml")
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", text))
    (problem,) = err.value.problems
    assert (Path(problem.file).name, problem.path, problem.line) == ("f.yaml", "lines.1.policy", 11)
    assert "nope.yaml" in problem.message and "cannot read" in problem.message


def test_duplicate_line_names_name_both_files(lines: Path) -> None:
    write(lines / "lines" / "b.yaml", "name: a\n")
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", GOOD))
    (problem,) = err.value.problems
    assert (Path(problem.file).name, problem.path, problem.line) == ("f.yaml", "lines.1.policy", 11)
    assert "a.yaml" in problem.message and "b.yaml" in problem.message and "'a'" in problem.message


def test_same_file_listed_twice(lines: Path) -> None:
    text = GOOD.replace("lines/b.yaml", "./lines/a.yaml")
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", text))
    assert problems(err) == {("f.yaml", "lines.1.policy", 11)}
    assert "listed twice" in str(err.value)


def test_guarantees_over_100_pct(lines: Path) -> None:
    text = GOOD.replace("    weight: 2.5\n", "    weight: 2.5\n    guarantee_pct: 70\n")
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", text))
    assert problems(err) == {("f.yaml", "lines", 7)}
    assert "110%" in str(err.value)


def test_guarantees_of_exactly_100_pct_are_fine(lines: Path) -> None:
    text = GOOD.replace("    weight: 2.5\n", "    weight: 2.5\n    guarantee_pct: 60\n")
    assert load_factory(write(lines / "f.yaml", text)).names == ("a", "b")


def test_every_problem_of_every_file_at_once(lines: Path) -> None:
    write(lines / "lines" / "b.yaml", "name: b\napproval: sometimes\n")
    text = (
        "name: f\n"
        "colour: red\n"
        "limits: {slots: 0}\n"
        "lines:\n"
        "  - {policy: lines/a.yaml, owner: ''}\n"
        "  - {policy: lines/b.yaml, owner: t, weight: 0}\n"
        "  - {policy: lines/gone.yaml, owner: t}\n"
    )
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", text))
    assert problems(err) == {
        ("f.yaml", "colour", 2),
        ("f.yaml", "limits.slots", 3),
        ("f.yaml", "lines.0.owner", 5),
        ("f.yaml", "lines.1.weight", 6),
        ("f.yaml", "lines.2.policy", 7),
        ("b.yaml", "approval", 2),
    }
    assert "6 problem(s)" in str(err.value)


def test_lines_and_owner_are_required(lines: Path) -> None:
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", "name: f\nlines: []\n"))
    assert problems(err) == {("f.yaml", "lines", 2)}
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", "name: f\nlines:\n  - policy: lines/a.yaml\n"))
    assert problems(err) == {("f.yaml", "lines.0.owner", 3)}
    with pytest.raises(FactoryError) as err:
        load_factory(
            write(lines / "f.yaml", "name: f\nlines:\n  - {policy: lines/a.yaml, owner: ' '}\n")
        )
    assert "owner must name a team" in str(err.value)


def test_yaml_syntax_and_unreadable_factory(lines: Path) -> None:
    with pytest.raises(FactoryError) as err:
        load_factory(write(lines / "f.yaml", "name: f\nlines: [\n  - x: 1\n"))
    assert err.value.problems[0].line is not None and "YAML syntax" in str(err.value)
    with pytest.raises(FactoryError, match="cannot read"):
        load_factory(lines / "absent.yaml")


def test_single_line_factory(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "name: solo\n")
    factory = single_line_factory(path)
    assert factory.name == "solo" and factory.names == ("solo",) and factory.path is None
    limits = factory.spec.limits
    assert (limits.energy_kwh_per_day, limits.training_tokens_per_day, limits.slots) == (
        None,
        None,
        1,
    )
    (line,) = factory.lines
    assert (line.spec.priority, line.spec.guarantee_pct, line.spec.weight) == (0, 0, 1)
    assert line.spec.owner == "default" and line.path == path.resolve()
    write(tmp_path / "bad.yaml", "name: solo\napproval: sometimes\n")
    with pytest.raises(PolicyError) as err:
        single_line_factory(tmp_path / "bad.yaml")
    assert not isinstance(err.value, FactoryError)
    assert [(p.path, p.line) for p in err.value.problems] == [("approval", 2)]


def test_is_factory_file(lines: Path) -> None:
    assert is_factory_file(write(lines / "f.yaml", GOOD))
    assert not is_factory_file(lines / "lines" / "a.yaml")
    assert not is_factory_file(lines / "missing.yaml")
    assert not is_factory_file(write(lines / "broken.yaml", "lines: [\n"))


def test_schema() -> None:
    schema = factory_json_schema()
    assert {"name", "limits", "lines"} <= set(schema["properties"])
    assert schema == FactoryPolicy.model_json_schema()
    json.dumps(schema)


@pytest.mark.parametrize(
    ("path", "names"),
    [
        (ROOT / "configs" / "factory.yaml", ("alpha", "beta", "gamma")),
        (ROOT / "tests" / "configs" / "factory-tiny.yaml", ("a", "b", "c")),
    ],
)
def test_shipped_factories_load(path: Path, names: tuple[str, ...]) -> None:
    factory = load_factory(path)
    assert factory.names == names
    limits = factory.spec.limits
    assert limits.slots == 2 and limits.energy_kwh_per_day and limits.training_tokens_per_day
    assert len({line.spec.owner for line in factory.lines}) == 3
    assert len({line.spec.priority for line in factory.lines}) > 1
    eras = [
        {pkg for era in line.policy.data.source.eras for pkg in era}  # type: ignore[union-attr]
        for line in factory.lines
    ]
    assert all(not (x & y) for i, x in enumerate(eras) for y in eras[i + 1 :]), eras
    for line in factory.lines:
        assert line.policy.tuning.trials_per_cycle == 2
        assert line.policy.data.source.max_files_per_era <= 8  # type: ignore[union-attr]


def test_cli_checks_a_good_factory(lines: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(lines / "f.yaml", GOOD)
    assert main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "factory f" in out and load_factory(path).spec.version in out
    assert "a: owner team-a, priority 10, guarantee 40%" in out
    assert "b: owner team-b, priority 0, guarantee 0%" in out
    assert str((lines / "lines" / "b.yaml").resolve()) in out


def test_cli_checks_a_bad_factory(lines: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_line = write(lines / "lines" / "b.yaml", "name: b\napproval: sometimes\n")
    path = write(lines / "f.yaml", GOOD.replace("slots: 2", "slots: 0"))
    assert main(["policy", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line 5: limits.slots:" in err
    assert f"{bad_line}: line 2: approval:" in err


def test_cli_still_checks_a_plain_policy(lines: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(lines / "lines" / "a.yaml")]) == 0
    assert "OK (policy a, version" in capsys.readouterr().out
