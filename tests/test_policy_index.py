"""The policy index and decision cache give exactly Casbin's verdicts and explanations."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bot._policy_files import VERBS, canonical_resource
from bot._policy_index import LAM_MATCHER, indexes
from bot.models import Verb
from bot.policy import DECISION_CACHE_SIZE, Policy

POLICIES = Path(__file__).resolve().parent.parent / "policies"
MODEL = (POLICIES / "model.conf").read_text()

Request = tuple[str, str, str, str, Verb]


def write_policy(directory: Path, policy_csv: str, model_conf: str = MODEL) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.conf").write_text(model_conf)
    (directory / "policy.csv").write_text(policy_csv)
    return directory


def load(text: str, model_conf: str = MODEL) -> Policy:
    with tempfile.TemporaryDirectory() as directory:
        return Policy.load(write_policy(Path(directory), text, model_conf))


def casbin_says(policy: Policy, request: Request) -> tuple[bool, list[str]]:
    """Casbin's own ``enforce_ex`` on the canonical request: the verdict and the rule it names."""
    subject, environment, action, resource, verb = request
    allowed, explained = policy._enforcer.enforce_ex(
        subject, environment, action, canonical_resource(resource), verb
    )
    return bool(allowed), [str(field) for field in explained]


def assert_agrees_with_casbin(policy: Policy, request: Request) -> None:
    """The indexed, the cached and the Casbin evaluation of ``request`` are one and the same."""
    subject, environment, action, resource, verb = request
    canonical = (subject, environment, action, canonical_resource(resource), verb)
    reference = policy._evaluate_with_casbin(*canonical)
    indexed = policy._evaluate_uncached(*canonical)
    assert indexed == reference, request
    assert policy._evaluate(*canonical) == reference, request
    assert policy._evaluate(*canonical) == reference, request
    assert policy.check(*request) == (reference.allowed, reference.reason)
    if "*" not in environment + action and environment and action:
        allowed, explained = casbin_says(policy, request)
        assert indexed.allowed == allowed, request
        assert (list(indexed.rule.fields) if indexed.rule else []) == explained, request


# --- random policies ------------------------------------------------------------------------

# A chain role:c0 < role:c1 < ... lets a subject reach roles at any depth; Casbin's g()
# follows at most 9 links, so rules on role:c8 can apply through it and rules on role:c9
# cannot.
CHAIN = [f"role:c{i}" for i in range(12)]
RULE_SUBJECTS = ["user:a", "role:x", "role:y", "group:g", "role:c2", "role:c8", "role:c9"]
ROLES = ["role:x", "role:y", "group:g", "role:c0"]
VERB_EFFECTS = [(v, "allow") for v in VERBS] + [(v, "deny") for v in (*VERBS, "*")]

# Patterns and values include literals that are prefixes of values (web, webx), regex
# characters and dots that must match only themselves, newlines and climbing paths.
rule_strategy = st.builds(
    lambda sub, env, act, res, verb_effect: (sub, env, act, res, *verb_effect),
    st.sampled_from(RULE_SUBJECTS),
    st.sampled_from(["*", "prod", "dev", "p*", "*v", "pr.d"]),
    st.sampled_from(["*", "shell.a", "shell.*", "*.a", "s*l*.a", "db.(a|b)", "shell.a*"]),
    st.sampled_from(["*", "web", "web/*", "db", "[a", "*/x"]),
    st.sampled_from(VERB_EFFECTS),
)
link_strategy = st.tuples(
    st.sampled_from(["user:a", "user:b", "role:x", "role:y", "group:g"]),
    st.sampled_from(ROLES),
    st.sampled_from(["*", "prod", "dev", "p*", "*v", "pr.d"]),
).filter(lambda link: link[0] != link[1])
request_strategy = st.tuples(
    st.sampled_from(["user:a", "user:b", "role:x", "group:g", "role:c0", "user:z", ""]),
    st.sampled_from(["prod", "dev", "pv", "pr.d", "prodx", "prxd", "*"]),
    st.sampled_from(["shell.a", "shell.b", "db.(a|b)", "db.a", "shell.a.b", "shellXa"]),
    st.sampled_from(["*", "", "web", "web/x", "web/../db", "db", "[a", "q/x", "webx", "a\nb/x"]),
    st.sampled_from(VERBS),
)

FILLERS = st.sampled_from(["x", "rod", "a/b", ".", "shell", "\n", ""])


@st.composite
def request_near(draw: st.DrawFn, rules: list[tuple[str, ...]]) -> Request:
    """A random request, or half the time one made to meet a given rule (and maybe more)."""
    if not rules or draw(st.booleans()):
        return draw(request_strategy)
    subject, *patterns, verb, _effect = draw(st.sampled_from(rules))

    def instance(pattern: str) -> str:
        head, *tails = pattern.split("*")
        return head + "".join(draw(FILLERS) + tail for tail in tails)

    environment, action, resource = (instance(pattern) for pattern in patterns)
    subject = draw(st.sampled_from(["user:a", "user:b", subject, subject]))
    verbs: list[Verb] = [verb, verb, *VERBS] if verb in VERBS else [*VERBS]
    return subject, environment, action, resource, draw(st.sampled_from(verbs))


def policy_text(
    rules: list[tuple[str, ...]], links: list[tuple[str, str, str]], chain: int, chain_env: str
) -> str:
    lines = [f"p, {', '.join(rule)}" for rule in rules]
    lines += [f"g, {', '.join(link)}" for link in links]
    if chain:
        lines.append(f"g, user:a, role:c0, {chain_env}")
        lines += [f"g, {CHAIN[i]}, {CHAIN[i + 1]}, *" for i in range(chain)]
    return "\n".join(dict.fromkeys(lines)) + "\n"  # policy.csv refuses a repeated line


@settings(max_examples=400, deadline=None)
@given(
    rules=st.lists(rule_strategy, max_size=24, unique=True),
    links=st.lists(link_strategy, max_size=6, unique=True),
    chain=st.integers(min_value=0, max_value=11),
    chain_env=st.sampled_from(["*", "prod", "p*"]),
    data=st.data(),
)
def test_index_and_cache_agree_with_casbin_on_random_policies(
    rules: list[tuple[str, ...]],
    links: list[tuple[str, str, str]],
    chain: int,
    chain_env: str,
    data: st.DataObject,
) -> None:
    """On random policies, index, cache and Casbin agree on every verdict and the rule named."""
    requests = data.draw(st.lists(request_near(rules), min_size=1, max_size=10))
    policy = load(policy_text(rules, links, chain, chain_env))
    assert policy._indexed
    for request in requests:
        assert_agrees_with_casbin(policy, request)
    # Asked again in another order, every answer now comes from the cache, unchanged.
    for request in reversed(requests):
        assert_agrees_with_casbin(policy, request)


@settings(max_examples=200, deadline=None)
@given(
    rules=st.lists(rule_strategy, max_size=24, unique=True),
    environment=st.sampled_from(["prod", "dev", "pv"]),
    action=st.sampled_from(["shell.a", "db.(a|b)", "x.a"]),
    resource=st.sampled_from(["*", "web/x", "[a", "web/*"]),
    subject=st.sampled_from(["user:a", "role:x", "group:g"]),
)
def test_index_agrees_with_casbin_on_a_star_request_verb(
    rules: list[tuple[str, ...]], environment: str, action: str, resource: str, subject: str
) -> None:
    """A request whose verb is * itself, which LAM never sends, is still answered as Casbin does."""
    policy = load(policy_text(rules, [("user:a", "role:x", "*")], 0, "*"))
    assert policy._indexed
    held = policy._roles.held(subject, environment)
    allowed, rule = policy._index.decide(held, environment, action, resource, "*")
    expected, explained = policy._enforcer.enforce_ex(subject, environment, action, resource, "*")
    assert (allowed, list(rule.fields) if rule else []) == (bool(expected), list(explained))


@settings(max_examples=200, deadline=None)
@given(
    links=st.lists(link_strategy, max_size=8, unique=True),
    chain=st.integers(min_value=0, max_value=11),
    chain_env=st.sampled_from(["*", "prod", "p*"]),
    subject=st.sampled_from(["user:a", "user:b", "role:x", "role:c0", "user:z"]),
    environment=st.sampled_from(["prod", "dev", "pv", "staging", "pr.d", "p*"]),
)
def test_roles_of_is_what_casbin_g_links(
    links: list[tuple[str, str, str]],
    chain: int,
    chain_env: str,
    subject: str,
    environment: str,
) -> None:
    """roles_of lists exactly the roles Casbin's g() links the subject to in the environment."""
    policy = load(policy_text([], links, chain, chain_env))
    role_manager = policy._enforcer.get_model()["g"]["g"].rm
    names = {name for link in links for name in link[:2]} | set(CHAIN)
    linked = {
        role
        for role in names
        if role != subject and role_manager.has_link(subject, role, environment)
    }
    roles = policy.roles_of(subject, environment)
    assert len(roles) == len(set(roles))
    assert set(roles) == linked


# Few values, so that several subjects' rules cover the same step.
dense_rule_strategy = st.builds(
    lambda sub, env, act, res, verb_effect: (sub, env, act, res, *verb_effect),
    st.sampled_from(RULE_SUBJECTS),
    st.sampled_from(["*", "prod", "p*"]),
    st.sampled_from(["*", "shell.*", "shell.a", "shell.a*", "s*.a", "x"]),
    st.sampled_from(["*", "web/*", "web"]),
    st.sampled_from([("approve", "allow"), ("run", "allow"), ("approve", "deny")]),
)


@settings(max_examples=200, deadline=None)
@given(rules=st.lists(dense_rule_strategy, min_size=2, max_size=30, unique=True), data=st.data())
def test_granting_finds_what_a_scan_of_every_rule_finds(
    rules: list[tuple[str, ...]], data: st.DataObject
) -> None:
    """granting lists the subjects of covering allow rules in file order, as a full scan does."""
    requests = data.draw(st.lists(request_near(rules), min_size=1, max_size=10))
    policy = load(policy_text(rules, [], 0, "*"))
    for _, environment, action, raw_resource, verb in requests:
        resource = canonical_resource(raw_resource)
        scanned = dict.fromkeys(
            rule.subject
            for rule in policy._rules
            if rule.verb == verb
            and rule.effect == "allow"
            and rule.covers(environment, action, resource)
        )
        assert policy._index.granting(verb, environment, action, resource) == tuple(scanned)


# --- the shipped policy ---------------------------------------------------------------------


def test_shipped_policy_is_indexed_and_agrees_with_casbin_everywhere() -> None:
    """Every subject, environment, action, resource and verb of the shipped policy agrees."""
    policy = Policy.load(POLICIES)
    assert policy._indexed
    subjects = ["user:alice", "user:bob", "user:carol", "user:dave", "user:frank", "user:erin"]
    subjects += ["role:sre", "role:developer", "group:oncall", "user:nobody"]
    environments = ["dev", "staging", "prod", "qa"]
    actions = ["shell.disk_usage", "shell.tail_log", "shell.restart_service", "shell.flush_cache"]
    actions += ["db.query"]
    resources = ["*", "web", "cdn", "/var/log/app/a", "/var/log/app/../../etc/shadow"]
    for request in itertools.product(subjects, environments, actions, resources, VERBS):
        assert_agrees_with_casbin(policy, request)


# --- choices the index makes --------------------------------------------------------------


def test_the_shipped_matcher_is_the_one_indexed() -> None:
    """The matcher of policies/model.conf is LAM_MATCHER, so shipped policies use the index."""
    matcher = load("")._enforcer.get_model()["m"]["m"].value
    assert indexes(matcher)
    assert indexes("  " + LAM_MATCHER.replace(" && ", "\n  &&  ") + "\n")
    assert not indexes(LAM_MATCHER.replace('"deny"', '"de ny"'))
    assert not indexes(LAM_MATCHER.replace("r_env)", "r_sub)", 1))


def test_another_matcher_is_evaluated_by_casbin(tmp_path: Path) -> None:
    """A changed matcher is not indexed: Casbin evaluates it, and its answers are Casbin's."""
    # The same logic with its operands swapped: equivalent, but not the text the index knows.
    model = MODEL.replace(
        "g(r.sub, p.sub, r.env) && wildcardMatch(r.env, p.env)",
        "wildcardMatch(r.env, p.env) && g(r.sub, p.sub, r.env)",
    )
    assert model != MODEL
    deny = "p, user:amy, prod, shell.flush_cache, *, *, deny"
    policy = load(
        f"p, role:ops, prod, shell.*, *, run, allow\n{deny}\ng, user:amy, role:ops, *\n", model
    )
    assert not policy._indexed
    assert policy.check("user:amy", "prod", "shell.uptime", "*", "run") == (
        True,
        "p, role:ops, prod, shell.*, *, run, allow",
    )
    assert policy.check("user:amy", "prod", "shell.flush_cache", "*", "run") == (False, deny)
    assert_agrees_with_casbin(policy, ("user:amy", "prod", "shell.flush_cache", "x", "request"))


def test_casbin_names_the_first_matching_deny_and_the_last_matching_allow() -> None:
    """Of several matching rules, the explanation is the first deny, else the last allow."""
    first_allow = "p, role:ops, prod, *, *, run, allow"
    last_allow = "p, user:amy, prod, shell.*, *, run, allow"
    first_deny = "p, role:ops, prod, shell.x, *, *, deny"
    last_deny = "p, user:amy, prod, shell.x, *, run, deny"
    text = "\n".join([first_allow, first_deny, last_allow, last_deny, "g, user:amy, role:ops, *"])
    policy = load(text + "\n")
    assert policy.check("user:amy", "prod", "shell.y", "*", "run") == (True, last_allow)
    assert policy.check("user:amy", "prod", "shell.x", "*", "run") == (False, first_deny)
    assert_agrees_with_casbin(policy, ("user:amy", "prod", "shell.y", "*", "run"))
    assert_agrees_with_casbin(policy, ("user:amy", "prod", "shell.x", "*", "run"))


def test_a_role_more_than_nine_links_away_grants_nothing() -> None:
    """Casbin's g() follows nine links at most; the index and roles_of stop where it stops."""
    links = [f"g, {CHAIN[i]}, {CHAIN[i + 1]}, *" for i in range(11)]
    rules = [f"p, {role}, dev, shell.{role[5:]}, *, run, allow" for role in CHAIN]
    policy = load("\n".join(["g, user:a, role:c0, *", *links, *rules]) + "\n")
    assert policy.roles_of("user:a", "dev") == CHAIN[:9]
    assert policy.check("user:a", "dev", "shell.c8", "*", "run")[0]
    assert not policy.check("user:a", "dev", "shell.c9", "*", "run")[0]
    for role in CHAIN:
        assert_agrees_with_casbin(policy, ("user:a", "dev", f"shell.{role[5:]}", "*", "run"))


def test_a_cycle_of_roles_resolves_once_each() -> None:
    """Roles that include each other are each listed once, and the subject never as its own role."""
    policy = load(
        "g, user:u, role:a, *\ng, role:a, role:b, *\ng, role:b, role:a, *\n"
        "p, role:b, dev, x, *, run, allow\n"
    )
    assert policy.roles_of("user:u", "dev") == ["role:a", "role:b"]
    assert policy.roles_of("role:a", "dev") == ["role:b"]
    assert_agrees_with_casbin(policy, ("user:u", "dev", "x", "*", "run"))
    assert_agrees_with_casbin(policy, ("role:a", "dev", "x", "*", "run"))


# --- the decision cache ---------------------------------------------------------------------


def test_a_repeated_check_is_answered_from_the_cache() -> None:
    """Checking the same step again is a cache hit; the key is the canonical request."""
    policy = load("p, user:amy, dev, x, web/*, run, allow\n")
    assert policy._decisions.cache_info().maxsize == DECISION_CACHE_SIZE
    assert policy.check("user:amy", "dev", "x", "web/a", "run") == (
        True,
        "p, user:amy, dev, x, web/*, run, allow",
    )
    policy.check("user:amy", "dev", "x", "web/./a", "run")
    policy.check("user:amy", "dev", "x", "web/a", "request")
    info = policy._decisions.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 2, 2)


def test_a_reloaded_policy_starts_with_an_empty_cache(tmp_path: Path) -> None:
    """A reload builds a new Policy with its own empty cache; the old one keeps its answers."""
    directory = write_policy(tmp_path / "policies", "p, user:amy, dev, x, *, run, allow\n")
    before = Policy.load(directory)
    assert before.check("user:amy", "dev", "x", "*", "run")[0]
    (directory / "policy.csv").write_text("p, user:amy, dev, x, *, run, deny\n")
    after = Policy.load(directory)
    assert after._decisions.cache_info().currsize == 0
    assert after.check("user:amy", "dev", "x", "*", "run") == (
        False,
        "p, user:amy, dev, x, *, run, deny",
    )
    assert before.check("user:amy", "dev", "x", "*", "run")[0]
    assert before._decisions.cache_info().currsize == 1
