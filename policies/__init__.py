"""Policy files: the operator's desired state for one production line."""

from policies.loader import PolicyError, PolicyProblem, load_policy, parse_policy
from policies.model import Policy, policy_json_schema

__all__ = [
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
]
