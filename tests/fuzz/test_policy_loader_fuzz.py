"""Fuzzing the policy loader (gateway/policy/load.py, yamlsource.py).

Mutations of the shipped bundle and the reference bundle, from single
characters to whole lines and YAML-specific constructs (anchors, merge keys,
tags, flow style, duplicate and case-changed keys). Two properties:

- loading raises nothing but PolicyError (which callers catch: a reload, an
  admin PUT, `gateway policy validate`), whatever the text;
- a bundle that loads denies exactly what the text says: its deny rules
  (rule-set deny lists as expanded countries and regions, anonymizer and
  unknown-country rules, org statuses, suspensions, stage limits) equal what
  an independent reading of the same text gives — PyYAML's pure-Python parser
  with duplicate keys refused, and group expansion written out again here. A
  parser quirk that let a deny rule fall out of the policy silently would
  show up as a difference.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.issues import PolicyError
from gateway.policy.load import FILES, load_bundle, load_texts
from gateway.policy.snapshot import GroupSet, Policy
from gateway.policy.yamlsource import YamlSyntaxError, _Loader, parse

from .conftest import fuzz

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = {
    "shipped": {name: path.read_text() for name in FILES if (path := ROOT / "policies" / name).exists()},
    "reference": {name: path.read_text() for name in FILES
                  if (path := ROOT / "tests" / "fixtures" / "reference" / "policy" / name).exists()},
}


# --- the independent reading --------------------------------------------------


class _Duplicate(Exception):
    pass


class _Strict:
    """PyYAML's own constructor (not yamlsource's builder), YAML 1.2 scalars
    as the loader documents them, duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=True) for key, _ in node.value]
        hashable = [str(k) if isinstance(k, (list, dict)) else k for k in keys]
        if len(set(hashable)) != len(hashable):
            raise _Duplicate()
        return super().construct_mapping(node, deep=True)  # type: ignore[misc]


class _PureLoader(_Strict, yaml.SafeLoader):
    """On the pure-Python parser, not libyaml."""


class _CLoader(_Strict, yaml.CSafeLoader):
    """On libyaml: the two parsers differ on some malformed text (a second BOM,
    some tabs); only where the pure one refuses is libyaml's reading used."""


for _reference in (_PureLoader, _CLoader):
    _reference.yaml_implicit_resolvers = {k: list(v) for k, v in _Loader.yaml_implicit_resolvers.items()}


def reference_read(texts: dict[str, str]) -> dict[str, Any] | None:
    """Each file's data as the reference parser reads it; None if it refuses."""
    data = {}
    for name in FILES:
        if name not in texts:
            data[name] = None
            continue
        for loader in (_PureLoader, _CLoader):
            try:
                data[name] = yaml.load(texts[name], Loader=loader)
                break
            except yaml.YAMLError:
                continue
            except (_Duplicate, ValueError, TypeError, RecursionError):
                return None
        else:
            return None
    return data


def _expand(groups: dict[str, Any], name: str, trail: tuple[str, ...] = ()) -> tuple[set[str], set[str]]:
    group = groups[name]
    countries, regions = set(group.get("countries") or []), set(group.get("regions") or [])
    for included in group.get("include") or []:
        if included not in trail:
            inner = _expand(groups, included, trail + (name,))
            countries |= inner[0]
            regions |= inner[1]
    return countries, regions


def _places(groups: dict[str, Any], names: list[str] | None) -> tuple[frozenset[str], frozenset[str]] | None:
    """Enforced places of a list of groups (a group in shadow mode enforces nothing)."""
    if names is None:
        return None
    countries: set[str] = set()
    regions: set[str] = set()
    for name in names:
        if name not in groups:  # in a bundle that loads, an ISO code of a single place (a suspension's)
            (regions if "-" in name else countries).add(name)
            continue
        if groups[name].get("mode", "enforce") == "shadow":
            continue
        inner = _expand(groups, name)
        countries |= inner[0]
        regions |= inner[1]
    return frozenset(countries), frozenset(regions)


def _moment(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def expected_denials(data: dict[str, Any]) -> dict[str, Any]:
    """The deny rules of a bundle read from raw YAML data."""
    groups = (data["jurisdictions.yaml"] or {}).get("groups") or {}
    framework = data["framework.yaml"]
    rules = framework.get("rules") or {}
    facts: dict[str, Any] = {
        "unknown_models": framework.get("unknown_models", "deny"),
        "unknown_country": framework.get("unknown_country", "allow"),
        "allow_unknown_places": framework.get("allow_unknown_places", False),
    }
    for name in ("all_models", "covered_models"):
        rule = rules.get(name) or {}
        enforced = rule.get("mode", "enforce") == "enforce"
        facts[name] = (
            _places(groups, rule.get("deny_jurisdictions") or []) if enforced else (frozenset(), frozenset()),
            enforced and bool(rule.get("deny_anonymizers", False)),
            enforced and bool(rule.get("check_declared_country", False)),
            rule.get("unknown_country") if enforced else None,
        )
    organizations = (data["organizations.yaml"] or {}).get("organizations") or {}
    facts["organizations"] = {name: org.get("status", "active") for name, org in organizations.items()}
    facts["suspensions"] = {
        s["id"]: (
            frozenset(s["models"]), "deny_outside" if s.get("deny_outside") is not None else "deny_in",
            _places(groups, s.get("deny_outside") if s.get("deny_outside") is not None else s.get("deny_in")),
            _moment(s.get("from")), _moment(s.get("until")), s.get("mode", "enforce"),
        )
        for s in ((data.get("suspensions.yaml") or {}).get("suspensions") or [])
    }
    models = (data["models.yaml"] or {}).get("models") or {}
    facts["stages"] = {
        name: tuple(
            (stage["stage"], _moment(stage["from"]),
             None if stage.get("tiers") is None and stage["stage"] not in ("internal", "government_review")
             else frozenset(stage["tiers"]) if stage.get("tiers") is not None
             else frozenset() if stage["stage"] == "internal" else frozenset({"government"}),
             _places(groups, stage.get("jurisdictions")))
            for stage in model["release"]
        )
        for name, model in models.items()
    }
    return facts


def _set_places(groups: GroupSet | None) -> tuple[frozenset[str], frozenset[str]] | None:
    return None if groups is None else (frozenset(groups.countries), frozenset(groups.regions))


def loaded_denials(policy: Policy) -> dict[str, Any]:
    """The same facts, read from the compiled snapshot that decide() uses."""
    facts: dict[str, Any] = {"unknown_models": policy.unknown_models, "unknown_country": policy.unknown_country,
                             "allow_unknown_places": policy.allow_unknown_places}
    for name in ("all_models", "covered_models"):
        rule = getattr(policy, name)
        enforced = not rule.shadow
        facts[name] = (
            _set_places(rule.deny) if enforced else (frozenset(), frozenset()),
            enforced and rule.deny_anonymizers,
            enforced and rule.check_declared_country,
            rule.unknown_country if enforced else None,
        )
    facts["organizations"] = {name: org.status for name, org in policy.organizations.items()}
    facts["suspensions"] = {
        s.id: (frozenset(s.models), s.scope, _set_places(s.groups), s.starts, s.ends, s.mode) for s in policy.suspensions
    }
    facts["stages"] = {
        name: tuple((s.name, s.starts.timestamp(), s.tiers, _set_places(s.jurisdictions)) for s in model.stages)
        for name, model in policy.models.items()
    }
    return facts


def _suspension_models_by_id(policy: Policy, facts: dict[str, Any]) -> dict[str, Any]:
    """Suspensions name models by alias or in any case; the snapshot by id."""
    for sid, entry in list(facts["suspensions"].items()):
        models = frozenset(policy.names[m.strip().casefold()].id for m in entry[0])
        facts["suspensions"][sid] = (models, *entry[1:])
    return facts


def check(texts: dict[str, str]) -> Policy | None:
    """Load; only PolicyError may escape, and a loaded bundle denies what its text says."""
    try:
        policy = load_texts(texts).policy
    except PolicyError:
        return None
    data = reference_read(texts)
    assert data is not None, "the loader accepted a bundle that a strict YAML reader refuses"
    assert loaded_denials(policy) == _suspension_models_by_id(policy, expected_denials(data))
    return policy


# --- mutations ------------------------------------------------------------------

_YAML_BITS = st.sampled_from([
    ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: ", "!!str ", "!!int ", "!!float ", "!!binary ",
    "!!timestamp ", "!!set ", "!!omap ", "!!python/object:os.system ", "? ", "|", ">", "'", '"', "#", "%YAML 1.1\n",
    "---\n", "...\n", "\t", "\n", "  ", "\\", "\x00", "\ufeff", "\u2028", "\r", "null", "~", "true", "yes", "NO",
    ".nan", ".inf", "1e999", "2026-13-01", "2026-02-30T00:00:00Z", "0x", "0o9", "1_000", "\ud800",
])
_TEXT = st.one_of(_YAML_BITS, st.text(max_size=6))


@st.composite
def mutated_bundle(draw: st.DrawFn) -> dict[str, str]:
    texts = dict(BUNDLES[draw(st.sampled_from(sorted(BUNDLES)))])
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(FILES))
        texts[name] = draw(_mutation(texts.get(name, "")))
    return texts


def _mutation(text: str) -> st.SearchStrategy[str]:
    lines = text.split("\n")
    index = st.integers(0, max(len(lines) - 1, 0))
    position = st.integers(0, len(text))

    def splice(at: int, length: int, insert: str) -> str:
        return text[:at] + insert + text[at + length:]

    def on_line(i: int, change: Any) -> str:
        return "\n".join(lines[:i] + change(lines[i]) + lines[i + 1:])

    return st.one_of(
        st.builds(splice, position, st.integers(0, 8), _TEXT),                              # characters
        st.builds(lambda i: on_line(i, lambda l: []), index),                                # drop a line
        st.builds(lambda i: on_line(i, lambda l: [l, l]), index),                            # repeat a line: duplicate keys
        st.builds(lambda i, n: on_line(i, lambda l: [" " * n + l]), index, st.integers(1, 4)),  # re-indent
        st.builds(lambda i: on_line(i, lambda l: [l.lstrip(" ")]), index),
        st.builds(lambda i: on_line(i, lambda l: [l.upper()]), index),                        # case of keys
        st.builds(lambda i: on_line(i, lambda l: [l.replace(": ", ": &x ", 1)]), index),     # anchors, aliases
        st.builds(lambda i, j: on_line(i, lambda l: [lines[j]]), index, index),             # a line moved
        st.builds(lambda i, j: on_line(i, lambda l: [l.replace(":", ": *x #", 1), lines[j]]), index, index),
        st.builds(lambda i, bit: on_line(i, lambda l: [l.replace(": ", ": " + bit, 1)]), index, _YAML_BITS),
        st.builds(lambda i: on_line(i, lambda l: [l.split("#")[0]]), index),
        st.just(text.replace("\n", "\r\n")),
        st.just("\ufeff" + text),
        st.just(text.replace("  ", "\t")),
        st.builds(lambda t: t, st.text(max_size=200)),                                       # anything at all
    )


@fuzz(examples=100)
@given(mutated_bundle())
def test_mutated_bundles(texts: dict[str, str]) -> None:
    check(texts)


@fuzz(examples=50)
@given(st.sampled_from(FILES), st.binary(max_size=300), st.sampled_from(sorted(BUNDLES)))
def test_arbitrary_bytes_on_disk(name: str, data: bytes, bundle: str) -> None:
    """A file on disk is bytes: undecodable ones are reported, never raised."""
    with tempfile.TemporaryDirectory() as directory:
        for file, text in BUNDLES[bundle].items():
            Path(directory, file).write_text(text)
        Path(directory, name).write_bytes(data)
        try:
            load_bundle(directory)
        except PolicyError:
            pass


# --- targeted cases: each must fail loudly or keep every deny rule ---------------

FRAMEWORK_DENY = "    deny_jurisdictions: [embargoed]\n"


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_bundles_as_shipped_agree_with_the_reference_reading(bundle: str) -> None:
    assert check(BUNDLES[bundle]) is not None


@pytest.mark.parametrize("replacement", [
    FRAMEWORK_DENY + "    deny_jurisdictions: []\n",                   # a second, weaker value
    FRAMEWORK_DENY + "    Deny_Jurisdictions: []\n",                   # the same key in another case
    "    deny_jurisdiction: [embargoed]\n",                             # a misspelt key
    "    deny_jurisdictions: ~\n",
    "    deny_jurisdictions:\n",
    "    deny_jurisdictions: embargoed\n",                              # a string, not a list
    "    deny_jurisdictions: [Embargoed]\n",
    "    deny_jurisdictions: [embargoed]\n    <<: {deny_jurisdictions: []}\n",
    "    deny_jurisdictions: !!set {embargoed}\n",
    "    deny_jurisdictions: !!str [embargoed]\n",                      # a tag the builder ignored
    "    deny_jurisdictions: [embargoed, 2026-13-01]\n",
    "    deny_jurisdictions: [embargoed]\n  all_models: {}\n",            # the rule set again, empty
])
def test_weakened_framework_deny_rules_are_refused(replacement: str) -> None:
    texts = dict(BUNDLES["shipped"])
    assert FRAMEWORK_DENY in texts["framework.yaml"]
    texts["framework.yaml"] = texts["framework.yaml"].replace(FRAMEWORK_DENY, replacement, 1)
    with pytest.raises(PolicyError):
        load_texts(texts)


@pytest.mark.parametrize("text", [
    "a: 2026-13-01", "a: 2026-02-30", "a: !!int 0x", "a: !!float abc", "a: [1, !!int x]",
    "? !!timestamp 2026-99-01\n: x", "a: !!timestamp 2026-13-01T00:00:00Z", "a: \ud800", "a: !!str [US]", "a: !!set {x}",
    "a: !!timestamp x", "a: !!int \"\"", "a: !!float \"\"", "a: !!int -", "a: !!bool maybe", "a: !!null x",
    "a: 1\n\ufeff# b: 2", "\ufeff\ufeffa: 1", "a: \"\ufeff\"",
])
def test_bad_scalars_are_yaml_errors(text: str) -> None:
    """Regression: PyYAML's constructors raised bare ValueError (a reload logged
    it as a publishing failure and retried forever; `gateway policy validate`
    printed a traceback) and libyaml UnicodeEncodeError on a lone surrogate.
    A byte order mark inside the text is refused too: libyaml skips it,
    PyYAML's own parser reads it as content (a comment to one, a key to the
    other)."""
    with pytest.raises(YamlSyntaxError):
        parse(text)


def test_bad_date_in_a_bundle_is_a_policy_error_with_its_line() -> None:
    texts = dict(BUNDLES["reference"])
    texts["models.yaml"] = texts["models.yaml"].replace("from: 2026-08-01T00:00:00Z", "from: 2026-13-01T00:00:00Z", 1)
    with pytest.raises(PolicyError) as refused:
        load_texts(texts)
    [issue] = [i for i in refused.value.errors if i.file == "models.yaml"]
    assert issue.line is not None
    assert "2026-13-01" in texts["models.yaml"].splitlines()[issue.line - 1]
