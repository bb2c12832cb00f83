"""Policy: loading and validating the Casbin files, decisions, explanations and policy tests."""

from __future__ import annotations

import functools
import posixpath
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot._policy_files import VERBS, canonical_resource, wildcard_match
from bot.errors import ConfigError
from bot.models import Step, Verb
from bot.policy import Policy
from bot.policy_tests import PolicyTestCase, run_policy_tests

POLICIES = Path(__file__).resolve().parent.parent / "policies"
MODEL = (POLICIES / "model.conf").read_text()
READ_ACTIONS = ["shell.disk_usage", "shell.uptime", "shell.processes", "shell.tail_log"]
ALL_ACTIONS = [*READ_ACTIONS, "shell.restart_service", "shell.flush_cache"]


@pytest.fixture(scope="module")
def shipped() -> Policy:
    return Policy.load(POLICIES)


def write_policy(directory: Path, policy_csv: str, model_conf: str = MODEL) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.conf").write_text(model_conf)
    (directory / "policy.csv").write_text(policy_csv)
    return directory


def policy_of(tmp_path: Path, *lines: str) -> Policy:
    return Policy.load(write_policy(tmp_path / "policies", "\n".join(lines) + "\n"))


def step(action: str, environment: str, resource: str = "*") -> Step:
    return Step(
        id="s1", action=action, args={}, environment=environment, resource=resource, risk="read"
    )


# --- the shipped policy and the demo ----------------------------------------------------------


def test_every_shipped_policy_test_passes(shipped: Policy) -> None:
    """Every case in policies/tests/*.yaml passes against the shipped policy."""
    results = run_policy_tests(shipped, POLICIES / "tests")
    failures = [
        (r.file, r.case.name, r.expected, r.actual, r.rule) for r in results if not r.passed
    ]
    assert len(results) >= 30
    assert failures == []


def test_demo_alice_disk_usage_in_staging_runs_outright(shipped: Policy) -> None:
    """Alice's disk-usage check in staging is allowed by the developer run rule."""
    decision = shipped.decide("user:alice", step("shell.disk_usage", "staging"))
    assert decision.decision == "allow"
    assert decision.rule == "p, role:developer, staging, shell.disk_usage, *, run, allow"
    assert (decision.approvers, decision.approvals_required) == ((), 0)


def test_demo_alice_restart_in_prod_needs_approval_and_bob_approves(shipped: Policy) -> None:
    """Alice's prod restart needs one SRE lead's approval; Bob may give it and Alice may not."""
    restart = step("shell.restart_service", "prod", "web")
    decision = shipped.decide("user:alice", restart)
    assert decision.decision == "needs_approval"
    assert decision.rule == "p, role:developer, prod, shell.*, *, request, allow"
    assert decision.approvers == ("role:sre-lead",)
    assert decision.approvals_required == 1
    assert shipped.may_approve("user:bob", restart) == (
        True,
        "p, role:sre-lead, prod, *, *, approve, allow",
    )
    assert shipped.may_approve("user:alice", restart) == (
        False,
        "no rule grants 'approve' on 'shell.restart_service' for 'web' in 'prod' "
        "to 'user:alice' (default deny)",
    )


def test_demo_alice_cache_flush_in_prod_is_denied_by_rule(shipped: Policy) -> None:
    """Alice's prod cache flush is denied by the developer deny rule, not by default."""
    decision = shipped.decide("user:alice", step("shell.flush_cache", "prod", "sessions"))
    assert decision.decision == "deny"
    assert decision.rule == "p, role:developer, prod, shell.flush_cache, *, *, deny"


def test_demo_dave_is_denied_in_prod_by_default(shipped: Policy) -> None:
    """Dave holds no role in prod, so his step is denied with the default-deny sentence."""
    decision = shipped.decide("user:dave", step("shell.uptime", "prod"))
    assert decision.decision == "deny"
    assert decision.rule == (
        "no rule grants 'run' or 'request' on 'shell.uptime' in 'prod' to 'user:dave' "
        "(default deny)"
    )


def test_check_explains_allow_deny_and_default_deny(shipped: Policy) -> None:
    """check returns the allow rule, the deny rule, or the default-deny sentence."""
    assert shipped.check("user:carol", "dev", "shell.uptime", "*", "run") == (
        True,
        "p, role:sre, dev, shell.*, *, run, allow",
    )
    assert shipped.check("user:alice", "prod", "shell.flush_cache", "x", "request") == (
        False,
        "p, role:developer, prod, shell.flush_cache, *, *, deny",
    )
    assert shipped.check("user:alice", "prod", "shell.uptime", "*", "run") == (
        False,
        "no rule grants 'run' on 'shell.uptime' in 'prod' to 'user:alice' (default deny)",
    )


def test_decision_carries_the_canonical_resource(shipped: Policy) -> None:
    """The decision names the resource policy actually checked, after normalisation."""
    decision = shipped.decide("user:alice", step("shell.tail_log", "prod", "/var/log/app/./a"))
    assert (decision.decision, decision.resource) == ("allow", "/var/log/app/a")


def test_roles_of_includes_groups_inherited_roles_and_environment_scope(shipped: Policy) -> None:
    """roles_of follows groups and role inheritance, only where the link's environment matches."""
    assert shipped.roles_of("user:frank", "prod") == ["group:oncall", "role:sre"]
    assert shipped.roles_of("user:frank", "staging") == ["group:oncall"]
    assert shipped.roles_of("user:bob", "dev") == ["role:sre-lead", "role:sre"]
    assert shipped.roles_of("user:dave", "prod") == []
    assert shipped.roles_of("user:sre", "prod") == []


def test_permitted_actions_lists_what_may_be_run_or_requested(shipped: Policy) -> None:
    """permitted_actions lists actions allowed or requestable, leaving out denied ones."""
    assert shipped.permitted_actions("user:alice", "prod", ALL_ACTIONS) == [
        *READ_ACTIONS,
        "shell.restart_service",
    ]
    assert shipped.permitted_actions("user:carol", "prod", ALL_ACTIONS) == ALL_ACTIONS
    assert shipped.permitted_actions("user:dave", "prod", ALL_ACTIONS) == []
    assert shipped.permitted_actions("user:dave", "staging", ALL_ACTIONS) == [
        *READ_ACTIONS,
        "shell.restart_service",
    ]


# --- semantics on small policies --------------------------------------------------------------


@pytest.mark.parametrize("deny_first", [True, False])
def test_deny_wins_over_allow_wherever_it_is_written(tmp_path: Path, deny_first: bool) -> None:
    """A matching deny rule beats a matching allow rule whether it comes before or after it."""
    allow = "p, role:ops, prod, shell.*, *, run, allow"
    deny = "p, user:amy, prod, shell.flush_cache, cache/*, run, deny"
    rules = [deny, allow] if deny_first else [allow, deny]
    policy = policy_of(tmp_path, *rules, "g, user:amy, role:ops, *")
    assert policy.check("user:amy", "prod", "shell.flush_cache", "cache/a", "run") == (False, deny)
    assert policy.check("user:amy", "prod", "shell.flush_cache", "other", "run") == (True, allow)


def test_an_empty_policy_denies_everything_by_default(tmp_path: Path) -> None:
    """With no rules at all, every verb is denied with the default-deny sentence."""
    policy = policy_of(tmp_path, "# nothing yet")
    for verb in VERBS:
        allowed, rule = policy.check("user:amy", "dev", "shell.uptime", "*", verb)
        assert not allowed
        assert rule.endswith("(default deny)")


def test_a_user_named_like_a_role_gets_nothing_from_it(tmp_path: Path) -> None:
    """user:sre and role:sre are different subjects, so role:sre's rules don't reach user:sre."""
    policy = policy_of(tmp_path, "p, role:sre, dev, *, *, run, allow")
    assert policy.check("role:sre", "dev", "shell.uptime", "*", "run")[0]
    assert not policy.check("user:sre", "dev", "shell.uptime", "*", "run")[0]
    assert policy.roles_of("user:sre", "dev") == []


def test_a_climbing_path_does_not_match_the_directory_it_climbs_out_of(tmp_path: Path) -> None:
    """web/../db is checked as db: it is not under web/* and a deny on db catches it."""
    policy = policy_of(
        tmp_path,
        "p, role:ops, dev, shell.read, web/*, run, allow",
        "p, role:ops, dev, shell.read, *, request, allow",
        "p, role:ops, dev, shell.read, db, request, deny",
        "g, user:amy, role:ops, *",
    )
    assert not policy.check("user:amy", "dev", "shell.read", "web/../db", "run")[0]
    assert policy.check("user:amy", "dev", "shell.read", "web/../db", "request") == (
        False,
        "p, role:ops, dev, shell.read, db, request, deny",
    )
    assert policy.check("user:amy", "dev", "shell.read", "web/x/../y", "run")[0]
    assert canonical_resource("//etc//passwd/") == "/etc/passwd"
    assert canonical_resource("") == "*"


def test_regex_looking_names_match_only_literally_and_whole(tmp_path: Path) -> None:
    """A dot is a dot and names match whole: no regex wildcards, no prefix or suffix matches."""
    policy = policy_of(
        tmp_path,
        "p, role:ops, dev, shell.disk_usage, *, run, allow",
        "p, role:ops, dev, db.(a|b), *, run, allow",
        "g, user:amy, role:ops, *",
    )
    for action in ["shellXdisk_usage", "shell.disk_usage2", "xshell.disk_usage", "db.a"]:
        assert not policy.check("user:amy", "dev", action, "*", "run")[0], action
    assert policy.check("user:amy", "dev", "db.(a|b)", "*", "run")[0]


def test_wildcard_match_is_anchored_and_star_crosses_separators() -> None:
    """wildcard_match matches the whole value and its star spans slashes and dots."""
    assert wildcard_match("/var/log/app/a/b.log", "/var/log/app/*")
    assert wildcard_match("/var/log/syslog", "*")
    assert wildcard_match(".hidden", "*")
    assert wildcard_match("shell.x", "shell.*")
    assert not wildcard_match("/var/log/app", "/var/log/app/*")
    assert not wildcard_match("ashell.x", "shell.*")
    assert not wildcard_match("shell.x\n", "shell.x")
    assert wildcard_match("a\nb", "a*b")


def test_star_verb_on_a_deny_rule_denies_every_verb(tmp_path: Path) -> None:
    """A deny rule with verb * denies run, request and approve alike."""
    deny = "p, user:amy, prod, shell.flush_cache, *, *, deny"
    policy = policy_of(
        tmp_path,
        "p, user:amy, prod, *, *, run, allow",
        "p, user:amy, prod, *, *, request, allow",
        "p, user:amy, prod, *, *, approve, allow",
        deny,
    )
    for verb in VERBS:
        assert policy.check("user:amy", "prod", "shell.flush_cache", "*", verb) == (False, deny)
        assert policy.check("user:amy", "prod", "shell.uptime", "*", verb)[0]


def test_g_environment_patterns_scope_roles(tmp_path: Path) -> None:
    """A g line holds only in environments its pattern matches; * holds everywhere."""
    policy = policy_of(
        tmp_path,
        "p, role:ops, *, shell.uptime, *, run, allow",
        "g, user:amy, role:ops, *",
        "g, user:bob, role:ops, stag*",
    )
    assert policy.check("user:amy", "prod", "shell.uptime", "*", "run")[0]
    assert policy.check("user:bob", "staging", "shell.uptime", "*", "run")[0]
    assert not policy.check("user:bob", "prod", "shell.uptime", "*", "run")[0]


def test_approvers_exclude_subjects_denied_approval(tmp_path: Path) -> None:
    """A subject whose approve grant is overridden by a deny rule is not offered as approver."""
    policy = policy_of(
        tmp_path,
        "p, user:amy, prod, shell.restart_service, *, request, allow",
        "p, role:lead, prod, *, *, approve, allow",
        "p, role:owner, prod, shell.restart_service, web, approve, allow",
        "p, role:lead, prod, shell.restart_service, db, approve, deny",
    )
    web = policy.decide("user:amy", step("shell.restart_service", "prod", "web"))
    assert web.approvers == ("role:lead", "role:owner")
    db = policy.decide("user:amy", step("shell.restart_service", "prod", "db"))
    assert db.decision == "deny"
    assert db.rule == (
        "p, user:amy, prod, shell.restart_service, *, request, allow lets 'user:amy' ask, but "
        "no rule grants 'approve' on 'shell.restart_service' for 'db' in 'prod' to anyone"
    )


def test_a_deny_on_run_leaves_request_open(tmp_path: Path) -> None:
    """Denying run only still lets the subject ask, so the step needs approval."""
    policy = policy_of(
        tmp_path,
        "p, user:amy, prod, *, *, run, allow",
        "p, user:amy, prod, shell.flush_cache, *, run, deny",
        "p, user:amy, prod, shell.flush_cache, *, request, allow",
        "p, user:lee, prod, *, *, approve, allow",
    )
    decision = policy.decide("user:amy", step("shell.flush_cache", "prod"))
    assert (decision.decision, decision.approvers) == ("needs_approval", ("user:lee",))


def test_a_pattern_for_environment_or_action_is_refused(shipped: Policy) -> None:
    """A request naming * as environment or action is denied, never matched as a pattern."""
    decision = shipped.decide("user:carol", step("shell.uptime", "*"))
    assert decision.decision == "deny"
    assert "not a concrete environment" in decision.rule
    assert not shipped.check("user:carol", "dev", "shell.*", "*", "run")[0]


def test_permitted_actions_respect_resource_scoped_rules(tmp_path: Path) -> None:
    """An action is listed while a deny leaves some resource open, and hidden once it covers all."""
    policy = policy_of(
        tmp_path,
        "p, user:amy, dev, logs.tail, /var/log/app/*, run, allow",
        "p, user:amy, dev, logs.tail, /var/log/app/secret.log, run, deny",
        "p, user:amy, dev, logs.grep, /var/log/app/*, run, allow",
        "p, user:amy, dev, logs.grep, /var/log/*, *, deny",
        "p, user:amy, dev, logs.head, /var/log/app/*, run, allow",
    )
    actions = ["logs.tail", "logs.grep", "logs.head", "logs.rm"]
    assert policy.permitted_actions("user:amy", "dev", actions) == ["logs.tail", "logs.head"]


# --- invalid files ---------------------------------------------------------------------------

BAD_POLICY_LINES = [
    ("p, role:a, dev, shell.x, *, run", "6 non-empty fields"),
    ("p, role:a, dev, shell.x, *, run, allow, extra", "6 non-empty fields"),
    ("p, role:a, dev, shell.x, , run, allow", "6 non-empty fields"),
    ("p, role:a, dev, shell.x, *, run, permit", "effect 'permit'"),
    ("p, role:a, dev, shell.x, *, execute, allow", "verb 'execute'"),
    ("p, role:a, dev, shell.x, *, *, allow", "verb '*' is only allowed in deny rules"),
    ("p, alice, dev, shell.x, *, run, allow", "subject 'alice'"),
    ("p, user:*, dev, shell.x, *, run, allow", "subject 'user:*'"),
    ("p, role:, dev, shell.x, *, run, allow", "subject 'role:'"),
    ("p, role:a, dev, shell.x, web/../db, run, allow", "write 'db'"),
    ("p, role:a, dev, shell.x, *, run, allow # note", "comments must be whole lines"),
    ("g, user:a, role:b", "3 non-empty fields"),
    ("g, user:a, user:b, *", "role 'user:b'"),
    ("g, role:a, role:a, *", "member of itself"),
    ("x, role:a, dev", "starts with 'p'"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_POLICY_LINES)
def test_a_malformed_policy_line_names_file_and_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    """An invalid policy.csv line stops loading with a ConfigError naming file, line and problem."""
    text = "# a comment\n\np, role:a, dev, shell.y, *, run, allow\n" + line + "\n"
    with pytest.raises(ConfigError) as caught:
        Policy.load(write_policy(tmp_path, text))
    assert f"{tmp_path / 'policy.csv'}:4:" in str(caught.value)
    assert problem in str(caught.value)


def test_brackets_in_a_policy_field_are_plain_characters(tmp_path: Path) -> None:
    """Brackets, which Casbin's own CSV reader treats as nesting, are matched literally."""
    policy = policy_of(tmp_path, "p, user:amy, dev, db.query, [a, run, allow")
    assert policy.check("user:amy", "dev", "db.query", "[a", "run")[0]
    assert not policy.check("user:amy", "dev", "db.query", "a", "run")[0]


def test_a_repeated_policy_line_names_both_lines(tmp_path: Path) -> None:
    """A duplicated rule is refused, naming the line it repeats."""
    text = "p, role:a, dev, x, *, run, allow\np,role:a,dev,x,*,run,allow\n"
    with pytest.raises(ConfigError, match=r"policy\.csv:2: repeats line 1"):
        Policy.load(write_policy(tmp_path, text))


BAD_MODELS = [
    (MODEL.replace("[matchers]", "[matcher]"), "unknown section [matcher]"),
    (MODEL.replace("r = sub, env, act, res, verb", "r = sub, obj, act"), "r = sub, env, act"),
    (MODEL.replace("p = sub, env, act, res, verb, eft", "p = sub, env"), "p = sub, env, act"),
    (MODEL.replace("g = _, _, _", "g = _, _"), "g = _, _, _"),
    (MODEL.replace("!some(where (p.eft == deny))", "true"), "e = some(where"),
    (MODEL.replace("g = _, _, _", "g _, _, _"), "expected 'key = value'"),
    (MODEL.replace("wildcardMatch(r.env", "noSuchMatch(r.env"), "unknown names noSuchMatch"),
    (MODEL.replace('p.eft == "deny"', 'p.eff == "deny"'), "unknown names p.eff"),
    (MODEL.replace("p.env) &&", "p.env) && &&"), "the matcher is not a valid expression"),
    (MODEL + "\n[matchers]\nm = true\n", "'m' is defined again"),
    (MODEL.replace("[policy_effect]", "# [policy_effect]").replace("e = some", "# e = "), None),
]


@pytest.mark.parametrize(("model", "problem"), BAD_MODELS)
def test_a_malformed_model_names_file_and_problem(
    tmp_path: Path, model: str, problem: str | None
) -> None:
    """An invalid model.conf stops loading with a ConfigError naming the file and the problem."""
    write_policy(tmp_path, "p, role:a, dev, x, *, run, allow\n", model)
    with pytest.raises(ConfigError) as caught:
        Policy.load(tmp_path)
    message = str(caught.value)
    if problem is None:
        assert message == f"{tmp_path / 'model.conf'}: missing [policy_effect] with 'e = ...'"
    else:
        assert message.startswith(f"{tmp_path / 'model.conf'}:")
        assert problem in message
        line = int(message.split(":")[1])
        assert 1 <= line <= len(model.splitlines())


def test_a_matcher_failing_at_run_time_denies_and_names_the_model(tmp_path: Path) -> None:
    """A matcher that raises on a real request denies it, naming model.conf, instead of crashing."""
    model = MODEL.replace("(r.verb == p.verb", "(r.verb == p.verb + 1")
    policy = Policy.load(write_policy(tmp_path, "p, user:amy, dev, x, *, run, allow\n", model))
    allowed, reason = policy.check("user:amy", "dev", "x", "*", "run")
    assert not allowed
    assert reason.startswith(f"{tmp_path / 'model.conf'}:29: the matcher failed (TypeError")


@pytest.mark.parametrize("missing", ["model.conf", "policy.csv"])
def test_a_missing_policy_file_is_named(tmp_path: Path, missing: str) -> None:
    """A missing model.conf or policy.csv is a ConfigError naming the file."""
    write_policy(tmp_path, "p, role:a, dev, x, *, run, allow\n")
    (tmp_path / missing).unlink()
    with pytest.raises(ConfigError, match=f"{missing}: policy file not found"):
        Policy.load(tmp_path)


# --- policy tests ----------------------------------------------------------------------------


def test_a_failing_policy_case_reports_expected_actual_and_rule(tmp_path: Path) -> None:
    """A case whose outcome differs is reported failed, with expected, actual and the rule."""
    policy = policy_of(tmp_path, "p, user:amy, dev, x, *, run, allow")
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "a.yaml").write_text(
        "- {subject: 'user:amy', environment: dev, action: x, expect: allow}\n"
        "- {subject: 'user:amy', environment: dev, action: x, expect: deny, name: wrong}\n"
        "- {subject: 'user:amy', environment: dev, action: x, expect: allow,"
        " expect_rule: deny}\n"
    )
    results = run_policy_tests(policy, tests)
    assert [r.passed for r in results] == [True, False, False]
    assert (results[1].expected, results[1].actual) == ("deny", "allow")
    assert results[1].rule == "p, user:amy, dev, x, *, run, allow"
    assert results[1].case == PolicyTestCase(
        subject="user:amy", environment="dev", action="x", expect="deny", name="wrong"
    )
    assert results[1].describe() == (
        "a.yaml: wrong: expected deny; got allow by p, user:amy, dev, x, *, run, allow"
    )
    assert results[2].describe() == (
        "a.yaml: user:amy x '*' in dev: expected allow by a rule containing 'deny'; "
        "got allow by p, user:amy, dev, x, *, run, allow"
    )


BAD_TEST_FILES = [
    ("- subject: user:amy\n  environment: [dev\n", r"a\.yaml:\d+: not valid YAML"),
    ("subject: user:amy\n", r"a\.yaml: expected a YAML list of test cases, got dict"),
    ("", r"a\.yaml: expected a YAML list of test cases, got NoneType"),
    ("- {subject: user:amy, environment: dev, action: x, expect: maybe}\n", r"case 1: expect"),
    ("- {subject: amy, environment: dev, action: x, expect: deny}\n", r"'user:amy'"),
    ("- {subject: user:amy, environment: dev, action: x, expect: deny, env: x}\n", r"env"),
]


@pytest.mark.parametrize(("content", "problem"), BAD_TEST_FILES)
def test_a_broken_policy_test_file_is_a_config_error(
    tmp_path: Path, shipped: Policy, content: str, problem: str
) -> None:
    """A policy test file that is not a valid list of cases is a ConfigError naming the file."""
    (tmp_path / "a.yaml").write_text(content)
    with pytest.raises(ConfigError, match=problem):
        run_policy_tests(shipped, tmp_path)


# --- property: the engine agrees with a tiny independent evaluator ------------------------------


@functools.cache
def reference_match(value: str, pattern: str) -> bool:
    """Whole-value match where * is any run of characters, by recursion instead of a regex."""
    if not pattern:
        return not value
    if pattern[0] == "*":
        return reference_match(value, pattern[1:]) or (
            bool(value) and reference_match(value[1:], pattern)
        )
    return bool(value) and value[0] == pattern[0] and reference_match(value[1:], pattern[1:])


RuleFields = tuple[str, str, str, str, str, str]
LinkFields = tuple[str, str, str]


def reference_matches(
    rules: list[RuleFields],
    links: list[LinkFields],
    request: tuple[str, str, str, str, Verb],
) -> list[RuleFields]:
    """The rules that apply to a request: held roles by fixpoint, patterns, and verb."""
    subject, env, action, resource, verb = request
    resource = "*" if resource == "*" else posixpath.normpath(resource)
    held = {subject}
    while grown := {r for m, r, e in links if m in held and reference_match(env, e)} - held:
        held |= grown
    return [
        rule
        for rule in rules
        if rule[0] in held
        and reference_match(env, rule[1])
        and reference_match(action, rule[2])
        and reference_match(resource, rule[3])
        and (rule[4] == verb or (rule[4] == "*" and rule[5] == "deny"))
    ]


def reference_allows(matched: list[RuleFields]) -> bool:
    effects = {rule[5] for rule in matched}
    return "allow" in effects and "deny" not in effects


VERB_EFFECTS = [(v, "allow") for v in VERBS] + [(v, "deny") for v in (*VERBS, "*")]
rule_strategy = st.builds(
    lambda sub, env, act, res, verb_effect: (sub, env, act, res, *verb_effect),
    st.sampled_from(["user:a", "user:b", "role:x", "role:y", "group:g"]),
    st.sampled_from(["*", "prod", "dev", "p*", "*v"]),
    st.sampled_from(["*", "shell.a", "shell.*", "shell.b", "*.a", "x.a"]),
    st.sampled_from(["*", "web", "web/*", "db", "/var/log/*", "/var/log/app/x"]),
    st.sampled_from(VERB_EFFECTS),
)
link_strategy = st.tuples(
    st.sampled_from(["user:a", "user:b", "role:x", "role:y", "group:g"]),
    st.sampled_from(["role:x", "role:y", "group:g"]),
    st.sampled_from(["*", "prod", "dev", "p*"]),
).filter(lambda link: link[0] != link[1])
request_strategy = st.tuples(
    st.sampled_from(["user:a", "user:b", "role:x", "group:g"]),
    st.sampled_from(["prod", "dev", "staging", "pr"]),
    st.sampled_from(["shell.a", "shell.b", "x.a", "shellXa", "shell.a.b"]),
    st.sampled_from(["*", "web", "web/x", "web/../db", "db", "/var/log/app/x", "/var/log/./y"]),
    st.sampled_from(VERBS),
)


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(rule_strategy, max_size=8, unique=True),
    links=st.lists(link_strategy, max_size=4, unique=True),
    requests=st.lists(request_strategy, min_size=1, max_size=6),
)
def test_engine_agrees_with_a_reference_evaluator(
    rules: list[RuleFields],
    links: list[LinkFields],
    requests: list[tuple[str, str, str, str, Verb]],
) -> None:
    """No request is allowed without a matching allow rule, and a matching deny rule always wins."""
    text = "".join(f"p, {', '.join(r)}\n" for r in rules)
    text += "".join(f"g, {', '.join(link)}\n" for link in links)
    with tempfile.TemporaryDirectory() as directory:
        policy = Policy.load(write_policy(Path(directory), text))
    for request in requests:
        matched = reference_matches(rules, links, request)
        allowed, reason = policy.check(*request)
        assert allowed == reference_allows(matched), (request, reason)
        matched_text = {f"p, {', '.join(rule)}" for rule in matched}
        if any(rule[5] == "deny" for rule in matched):
            assert reason in matched_text and reason.endswith(", deny")
        elif allowed:
            assert reason in matched_text and reason.endswith(", allow")
        else:
            assert reason.endswith("(default deny)")
