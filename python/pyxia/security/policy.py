"""Per-namespace authorization of the public API (pyxia's own; Oxia has none): which
authenticated caller may do what in which namespace. Pure rules, no I/O but loading the file.

The policy file (``--auth-policy-file``, YAML, docs/security.md)::

    rules:
      - name: operators                # optional, shown in nothing but errors about the file
        claims: {groups: ops}          # every listed claim must match (see below)
        namespaces: ["*"]              # names or shell-style patterns
        allow: [read, write, migrate, internal-keys]
      - users: [billing-svc]           # user names (the issuer's userNameClaim); "*" = anyone
        namespaces: [billing, "billing-*"]
        allow: [read, write]

A rule applies to a caller when every condition it has holds: ``users`` lists the caller's
name (or ``"*"``), and each entry of ``claims`` matches: a claim equal to the value (or to one
of the values, when a list is given), or a list claim containing it; ``a.b`` reaches the
nested claim ``b`` of ``a``. A rule needs ``users`` or ``claims``. The caller's grants in a
namespace are the union of the ``allow`` of every applicable rule whose ``namespaces`` match;
nothing is denied explicitly, and a caller no rule grants anything gets nothing.

Actions: ``read`` (Read, List, RangeScan, GetNotifications, GetSequenceUpdates), ``write``
(Write, WriteStream, sessions; GetTs in the TSO namespace), ``migrate`` (the
``override_version_id`` / ``override_modifications_count`` fields of a put, with ``write``),
``internal-keys`` (``include_internal_keys`` of List / RangeScan, with ``read``). Asking for a
namespace's shard assignments needs any grant in it.

Without a policy file every authenticated caller may read and write every namespace, and
nobody may use the privileged fields (unless ``--allow-migration-fields``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

READ = "read"
WRITE = "write"
MIGRATE = "migrate"
INTERNAL_KEYS = "internal-keys"
ACTIONS = (READ, WRITE, MIGRATE, INTERNAL_KEYS)

_RULE_KEYS = {"name", "users", "claims", "namespaces", "allow"}


class PolicyError(ValueError):
    """A policy file that cannot be used; the message says where and why."""


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: must be a string or a non-empty list of strings")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise PolicyError(f"{where}: {v!r} is not a string")
        out.append(str(v))
    return tuple(out)


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """The claim ``path`` (``a.b`` = claim ``b`` of the object claim ``a``), or None."""
    if path in claims:
        return claims[path]
    cur: Any = claims
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _claim_matches(actual: Any, wanted: tuple[str, ...]) -> bool:
    if actual is None:
        return False
    items = actual if isinstance(actual, list) else [actual]
    for a in items:
        if isinstance(a, bool):
            a = "true" if a else "false"
        if isinstance(a, (str, int, float)) and str(a) in wanted:
            return True
    return False


@dataclass(frozen=True)
class Rule:
    name: str
    users: frozenset[str] | None
    claims: tuple[tuple[str, tuple[str, ...]], ...]
    namespaces: tuple[str, ...]
    allow: frozenset[str]

    def applies_to(self, user: str, claims: Mapping[str, Any]) -> bool:
        if self.users is not None and "*" not in self.users and user not in self.users:
            return False
        return all(_claim_matches(claim_value(claims, c), v) for c, v in self.claims)

    def covers(self, namespace: str) -> bool:
        return any(fnmatchcase(namespace, p) for p in self.namespaces)


class AccessPolicy:
    """The rules; :meth:`grants` is what a caller may do in a namespace."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def default(cls) -> AccessPolicy:
        """No policy file: every authenticated caller reads and writes everywhere."""
        return cls([Rule("default", frozenset({"*"}), (), ("*",), frozenset({READ, WRITE}))])

    def grants(self, user: str, claims: Mapping[str, Any], namespace: str) -> frozenset[str]:
        out: set[str] = set()
        for r in self.rules:
            if r.covers(namespace) and r.applies_to(user, claims):
                out |= r.allow
        return frozenset(out)


def parse_policy(doc: Any, source: str = "the policy") -> AccessPolicy:
    """A policy from its parsed YAML document."""
    if not isinstance(doc, dict) or set(doc) != {"rules"}:
        raise PolicyError(f"{source}: must be a mapping with one key, rules")
    raw_rules = doc["rules"]
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{source}: rules must be a list")
    rules: list[Rule] = []
    for i, r in enumerate(raw_rules):
        where = f"{source}: rule {i + 1}"
        if not isinstance(r, dict):
            raise PolicyError(f"{where}: must be a mapping")
        unknown = set(r) - _RULE_KEYS
        if unknown:
            raise PolicyError(
                f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                f"(known: {', '.join(sorted(_RULE_KEYS))})"
            )
        name = str(r.get("name") or f"rule {i + 1}")
        where = f"{source}: rule {name!r}"
        users = frozenset(_strings(r["users"], f"{where}: users")) if "users" in r else None
        claims: list[tuple[str, tuple[str, ...]]] = []
        if "claims" in r:
            if not isinstance(r["claims"], dict) or not r["claims"]:
                raise PolicyError(f"{where}: claims must be a non-empty mapping")
            for c, v in r["claims"].items():
                claims.append((str(c), _strings(v, f"{where}: claim {c!r}")))
        if users is None and not claims:
            raise PolicyError(f'{where}: needs users or claims (users: ["*"] for anyone)')
        if "namespaces" not in r:
            raise PolicyError(f'{where}: needs namespaces (["*"] for all)')
        namespaces = _strings(r["namespaces"], f"{where}: namespaces")
        if "allow" not in r:
            raise PolicyError(f"{where}: needs allow (a list of {', '.join(ACTIONS)})")
        allow = frozenset(_strings(r["allow"], f"{where}: allow"))
        bad = allow - set(ACTIONS)
        if bad:
            raise PolicyError(
                f"{where}: unknown action(s) {', '.join(sorted(bad))} (known: {', '.join(ACTIONS)})"
            )
        rules.append(Rule(name, users, tuple(claims), namespaces, allow))
    return AccessPolicy(rules)


def load_policy(path: Path) -> AccessPolicy:
    """The policy in a YAML file (safe loader)."""
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(f"cannot read policy file {path}: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PolicyError(f"policy file {path} is not valid YAML: {e}") from None
    return parse_policy(doc, f"policy file {path}")
