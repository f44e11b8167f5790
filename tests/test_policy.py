"""Policy files: validation names field and line; the CLI exits 2 on errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli import main
from policies import PolicyError, load_policy, parse_policy
from policies.model import LocalClusterPolicy

ROOT = Path(__file__).parent.parent


def test_shipped_policies_are_valid() -> None:
    from policies.factory import is_factory_file, load_factory

    paths = [*sorted((ROOT / "configs").glob("*.yaml")), ROOT / "tests" / "configs" / "tiny.yaml"]
    paths += sorted((ROOT / "configs" / "lines").glob("*.yaml"))
    factories = [p for p in paths if is_factory_file(p)]
    policies = [p for p in paths if p not in factories]
    assert len(policies) >= 6 and factories
    for path in policies:
        assert load_policy(path).name
    for path in [*factories, ROOT / "tests" / "configs" / "factory-tiny.yaml"]:
        assert len(load_factory(path).lines) == 3


def test_errors_name_field_and_line() -> None:
    text = (
        "name: x\n"
        "budgets:\n"
        "  tokens_per_trial: -5\n"
        "  bogus: 1\n"
        "tuning:\n"
        "  search_space:\n"
        "    lr: {type: float, low: 2, high: 1}\n"
        "gates:\n"
        "  max_bpb: lots\n"
    )
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    found = {(p.path, p.line) for p in err.value.problems}
    assert ("budgets.tokens_per_trial", 3) in found
    assert ("budgets.bogus", 4) in found
    assert ("gates.max_bpb", 9) in found
    assert any(
        p.path.startswith("tuning.search_space.lr") and p.line == 7 for p in err.value.problems
    )
    assert "line 3" in str(err.value)


def test_missing_field_points_at_parent() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy("name: x\ndata:\n  source:\n    kind: directory\n")
    (problem,) = err.value.problems
    assert problem.path.startswith("data.source") and problem.path.endswith("path")
    assert problem.line == 4


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy("name: x\nbudgets: [1,\n  tokens: 3\n")
    assert err.value.problems[0].line is not None
    assert "YAML syntax" in err.value.problems[0].message


def test_not_a_mapping() -> None:
    with pytest.raises(PolicyError):
        parse_policy("- a\n- b\n")


def test_version_is_content_hash() -> None:
    a = parse_policy("name: x\n")
    b = parse_policy("# a comment\nname: x\n")
    c = parse_policy("name: x\napproval: required\n")
    assert a.version == b.version != c.version


def test_tuned_and_fixed_overlap_refused() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(
            "name: x\ntuning:\n  search_space:\n    lr: {type: float, low: 0.1, high: 1}\n"
            "  fixed: {lr: 0.5}\n"
        )
    assert "both tuned and fixed" in str(err.value)


def test_cli_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: good\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\napproval: sometimes\n")
    assert main(["policy", "check", str(good)]) == 0
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "approval" in err


def test_cli_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "budgets" in schema["properties"]


def test_baseline_must_be_in_search_space() -> None:
    with pytest.raises(PolicyError, match="baseline"):
        parse_policy("name: x\ntuning:\n  baseline: {momentum: 0.9}\n")


def test_cluster_section_defaults_and_errors() -> None:
    assert parse_policy("name: x\n").cluster.reuse_workers is True
    text = "name: x\ncluster:\n  reuse_workers: false\n  max_trials_per_worker: 0\n"
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    # the member's tag is in the path, as for data sources (data.source.directory.path)
    assert {(p.path, p.line) for p in err.value.problems} == {
        ("cluster.local.max_trials_per_worker", 4)
    }


@pytest.mark.parametrize(
    "section",
    ["", "cluster: {}\n", "cluster:\n  reuse_workers: false\n", "cluster: {kind: local}\n"],
)
def test_a_cluster_section_without_kind_is_local(section: str) -> None:
    policy = parse_policy("name: x\n" + section)
    assert isinstance(policy.cluster, LocalClusterPolicy) and policy.cluster.kind == "local"
    assert policy.cluster.reuse_workers is ("reuse_workers: false" not in section)


def test_an_unknown_cluster_kind_names_the_field() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy("name: x\ncluster:\n  kind: slurm\n", "p.yaml")
    (problem,) = err.value.problems
    assert problem.path == "cluster" and problem.line == 3
    assert "'kind'" in problem.message and "'slurm'" in problem.message
    assert "'local'" in problem.message  # and says what it could be


def test_the_default_cluster_kind_leaves_the_version_as_it_was() -> None:
    from policies.loader import parse_policy

    plain = parse_policy("name: x\ncluster: {reuse_workers: false}\n")
    tagged = parse_policy("name: x\ncluster: {kind: local, reuse_workers: false}\n")
    assert plain.version == tagged.version
    assert '"kind"' not in plain.canonical_json().split('"cluster"')[1].split("}")[0]
    assert parse_policy("name: x\ncluster: {reuse_workers: true}\n").version != plain.version


def test_settings_added_later_leave_an_old_policys_version_alone() -> None:
    """Capture, live monitoring, feedback and demo settings at their defaults are left out
    of the canonical form: a policy written before them keeps the version it had."""
    from conftest import TINY_POLICY

    old = load_policy(TINY_POLICY)
    assert old.version == "7dbd3e6273f6c405"
    capture = old.data.capture.model_copy(update={"enabled": True})
    edited = old.model_copy(update={"data": old.data.model_copy(update={"capture": capture})})
    assert '"capture"' in edited.canonical_json() and '"capture"' not in old.canonical_json()
