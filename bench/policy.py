"""Policy decisions per second on a big policy, next to raw Casbin measured in the same run.

The policy is synthetic and realistic in size: 200 roles with 50 rules each (10,000 ``p``
rules: literal and wildcard environments, actions and resources, ``run``, ``request`` and
``approve`` grants, one deny in eight, some with the verb ``*``) and 2,000 ``g`` lines
(1,950 users holding one role each, some only in some environments, and 50 roles that
inherit another). It is written with the repository's ``policies/model.conf`` to a
temporary directory and loaded with ``Policy.load``.

Measured, each over the same requests:

- ``casbin.Enforcer.enforce`` on the same model and rules, with the same ``wildcardMatch``
  function and domain matching (a small sample: it scans every rule);
- ``casbin.FastEnforcer.enforce``. Without a ``cache_key_order`` it is ``Enforcer.enforce``.
  Its key filtering keeps only rules whose key fields equal the request's, which cannot
  work with LAM's model: rules name roles, not users, and their environment and action are
  patterns. Filtering on the subject (``cache_key_order=[0]``) with the user as subject
  finds none of the user's role rules (the wrong-answer count is printed). The baseline,
  "FastEnforcer by role", is its best case: filtered on the subject and asked with the
  role the user holds directly, so it scans that role's 50 rules; it still ignores
  inherited roles, so it is a lower bound on what FastEnforcer costs for LAM's question;
- LAM's ``Policy.check``: cold (every request new to the decision cache) and warm (each
  request checked three times, as the engine does when planning, at approval and before
  running: one miss and two hits);
- LAM's ``Policy.decide`` (``run``, then ``request`` and the approvers when needed), cold
  and three times per step.

    python -m bench.policy [--requests 2000] [--rounds 5] [--casbin-sample 8]

Reports medians over the rounds of each round's p50, p99 and decisions per second; never
run as a test.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import casbin  # type: ignore[import-untyped]
from casbin.model import FastModel  # type: ignore[import-untyped]  # no type hints

from bot._policy_files import wildcard_match
from bot.models import Step, Verb
from bot.policy import Policy

REPO = Path(__file__).resolve().parent.parent
MODEL = (REPO / "policies" / "model.conf").read_text()

ROLES = 200
RULES_PER_ROLE = 50
USERS = 1_950
INHERITING = 50
ENVIRONMENTS = ["dev", "staging", "prod", "qa", "perf"]
CONNECTORS = [f"svc{n}" for n in range(40)]
VERBS: tuple[Verb, ...] = ("run", "request", "approve")

Request = tuple[str, str, str, str, Verb]


@dataclass(frozen=True)
class Synthetic:
    rules: list[tuple[str, str, str, str, str, str]]
    links: list[tuple[str, str, str]]
    role_of: dict[str, str]
    """Each user's directly held role."""

    def text(self) -> str:
        lines = [f"p, {', '.join(rule)}" for rule in self.rules]
        lines += [f"g, {', '.join(link)}" for link in self.links]
        return "\n".join(lines) + "\n"


def synthetic_policy(seed: int = 7) -> Synthetic:
    pick = random.Random(seed)
    rules: list[tuple[str, str, str, str, str, str]] = []
    for number in range(ROLES):
        role = f"role:r{number}"
        connectors = pick.sample(CONNECTORS, 4)
        seen: set[tuple[str, ...]] = set()
        while len(seen) < RULES_PER_ROLE:
            connector = pick.choice(connectors)
            environment = pick.choice([*ENVIRONMENTS, "*", "stag*", "p*"])
            action = pick.choice(
                [f"{connector}.action{pick.randrange(10)}"] * 6 + [f"{connector}.*", "*"]
            )
            resource = pick.choice(
                ["*", "*", f"/srv/{connector}/*", f"db{pick.randrange(5)}", f"/srv/{connector}/x"]
            )
            if pick.random() < 1 / 8:
                verb, effect = pick.choice(["run", "request", "*", "*"]), "deny"
            else:
                verb, effect = pick.choice(VERBS), "allow"
            rule = (role, environment, action, resource, verb, effect)
            if rule not in seen:
                seen.add(rule)
                rules.append(rule)
    links: list[tuple[str, str, str]] = []
    role_of: dict[str, str] = {}
    for number in range(USERS):
        user, role = f"user:u{number}", f"role:r{pick.randrange(ROLES)}"
        role_of[user] = role
        links.append((user, role, pick.choice(["*"] * 6 + ["prod", "stag*", "dev"])))
    for number in range(INHERITING):
        links.append((f"role:r{number}", f"role:r{ROLES - 1 - number}", "*"))
    return Synthetic(rules, links, role_of)


def requests(
    policy: Synthetic, count: int, pick: random.Random, taken: set[Request]
) -> list[Request]:
    """``count`` requests never produced before: half shaped after one of the user's rules."""
    by_role: dict[str, list[tuple[str, ...]]] = {}
    for rule in policy.rules:
        by_role.setdefault(rule[0], []).append(rule)
    users = sorted(policy.role_of)
    made: list[Request] = []
    while len(made) < count:
        user = pick.choice(users)
        if pick.random() < 0.5:
            _, pattern, action, resource, *_ = pick.choice(by_role[policy.role_of[user]])
            # Only the five environments: Casbin spends seconds on each new one (see main).
            fitting = [name for name in ENVIRONMENTS if wildcard_match(name, pattern)]
            environment = pick.choice(fitting or ENVIRONMENTS)
            action = action.replace("*", f"action{pick.randrange(10)}")
            if action.startswith("action"):
                action = f"{pick.choice(CONNECTORS)}.{action}"
            resource = resource.replace("*", pick.choice(["x", "a/b", f"f{pick.randrange(10**6)}"]))
        else:
            environment = pick.choice(ENVIRONMENTS)
            action = f"{pick.choice(CONNECTORS)}.action{pick.randrange(10)}"
            resource = pick.choice(
                ["*", f"db{pick.randrange(5)}", f"/srv/x/{pick.randrange(10**6)}"]
            )
        request: Request = (user, environment, action, resource, pick.choice(VERBS))
        if request not in taken:
            taken.add(request)
            made.append(request)
    return made


def casbin_enforcer(
    policy: Synthetic, cache_key_order: Sequence[int] | None = None
) -> casbin.Enforcer:
    """A plain Enforcer, or a FastEnforcer with key filtering, set up as ``Policy.load`` does."""
    if cache_key_order is None:
        enforcer = casbin.Enforcer(casbin.Enforcer.new_model(text=MODEL))
    else:
        model = FastModel(cache_key_order)
        model.load_model_from_text(MODEL)
        enforcer = casbin.FastEnforcer(model, cache_key_order=cache_key_order)
    enforcer.add_function("wildcardMatch", wildcard_match)
    enforcer.add_named_domain_matching_func("g", wildcard_match)
    enforcer.add_policies([list(rule) for rule in policy.rules])
    enforcer.add_grouping_policies([list(link) for link in policy.links])
    return enforcer


@dataclass(frozen=True)
class Round:
    p50: float
    p99: float
    per_second: float


def timed(call: Callable[[Request], object], batch: Sequence[Request], repeat: int = 1) -> Round:
    """Each call's latency in seconds, the calls on one request ``repeat`` times in a row."""
    latencies: list[float] = []
    clock = time.perf_counter
    started = clock()
    for request in batch:
        for _ in range(repeat):
            before = clock()
            call(request)
            latencies.append(clock() - before)
    elapsed = clock() - started
    latencies.sort()
    return Round(
        p50=latencies[len(latencies) // 2],
        p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        per_second=len(latencies) / elapsed,
    )


def median(rounds: list[Round]) -> Round:
    return Round(
        statistics.median(r.p50 for r in rounds),
        statistics.median(r.p99 for r in rounds),
        statistics.median(r.per_second for r in rounds),
    )


def step_of(request: Request) -> Step:
    _, environment, action, resource, _ = request
    return Step(
        id="s", action=action, args={}, environment=environment, resource=resource, risk="write"
    )


def main(count: int, rounds: int, casbin_sample: int) -> None:
    synthetic = synthetic_policy()
    with tempfile.TemporaryDirectory(prefix="lam-bench-") as directory:
        (Path(directory) / "model.conf").write_text(MODEL)
        (Path(directory) / "policy.csv").write_text(synthetic.text())
        started = time.perf_counter()
        policy = Policy.load(Path(directory))
        load_seconds = time.perf_counter() - started
    print(f"Policy.load: {load_seconds:.2f} s", file=sys.stderr)
    plain = casbin_enforcer(synthetic)
    # FastPolicy cannot hold a single key (pycasbin 2.8 fails adding rules), so the
    # filter is on the subject and the verb, the narrowest it can be for LAM's rules.
    keyed = casbin_enforcer(synthetic, cache_key_order=[0, 4])
    # Casbin's domain role manager builds a role graph for each environment the first time
    # a request names it, in time proportional to links x roles. Pay that before timing,
    # for both enforcers, and report it.
    warm_up: list[float] = []
    for environment in ENVIRONMENTS:
        for enforcer in (plain, keyed):
            started = time.perf_counter()
            enforcer.get_roles_for_user_in_domain("user:u0", environment)
            warm_up.append(time.perf_counter() - started)
    print(f"Casbin role graphs built ({sum(warm_up):.1f} s)", file=sys.stderr)

    pick = random.Random(11)
    taken: set[Request] = set()
    results: dict[str, list[Round]] = {}
    compared = wrong_by_role = wrong_user_asked = 0

    def measure(
        name: str, call: Callable[[Request], object], batch: Sequence[Request], repeat: int = 1
    ) -> None:
        results.setdefault(name, []).append(timed(call, batch, repeat))

    def by_role(request: Request) -> object:
        user, *rest = request
        return keyed.enforce(synthetic.role_of[user], *rest)

    for number in range(rounds):
        sample = requests(synthetic, casbin_sample, pick, taken)
        measure("casbin Enforcer", lambda r: plain.enforce(*r), sample)
        for request in sample:
            expected = (policy.check(*request)[0], _explained(policy, request))
            assert tuple(plain.enforce_ex(*request)) == expected, request
        batch = requests(synthetic, count, pick, taken)
        measure("FastEnforcer by role (baseline)", by_role, batch)
        measure("FastEnforcer keyed, user asked", lambda r: keyed.enforce(*r), batch)
        for request in batch:
            allowed = policy.check(*request)[0]
            compared += 1
            wrong_by_role += bool(by_role(request)) != allowed
            wrong_user_asked += bool(keyed.enforce(*request)) != allowed
        measure(
            "LAM check, cold", lambda r: policy.check(*r), requests(synthetic, count, pick, taken)
        )
        measure(
            "LAM check, 3x per request",
            lambda r: policy.check(*r),
            requests(synthetic, count, pick, taken),
            repeat=3,
        )
        measure(
            "LAM decide, cold",
            lambda r: policy.decide(r[0], step_of(r)),
            requests(synthetic, count, pick, taken),
        )
        measure(
            "LAM decide, 3x per step",
            lambda r: policy.decide(r[0], step_of(r)),
            requests(synthetic, count, pick, taken),
            repeat=3,
        )
        print(f"round {number + 1}/{rounds} done", file=sys.stderr)

    summary = {name: median(of_rounds) for name, of_rounds in results.items()}
    base = summary["FastEnforcer by role (baseline)"]
    print(
        f"{len(synthetic.rules)} p rules, {len(synthetic.links)} g lines; {count} requests per "
        f"round ({casbin_sample} for casbin Enforcer), {rounds} rounds; medians over rounds"
    )
    print(
        f"{'':32} {'p50 µs':>9} {'p99 µs':>9} {'decisions/s':>12} "
        f"{'p50 vs base':>12} {'p99 vs base':>12} {'rate vs base':>12}"
    )
    for name, result in summary.items():
        print(
            f"{name:32} {result.p50 * 1e6:9.1f} {result.p99 * 1e6:9.1f} {result.per_second:12.0f}"
            f" {base.p50 / result.p50:11.2f}x {base.p99 / result.p99:11.2f}x"
            f" {result.per_second / base.per_second:11.2f}x"
        )
    print(
        f"answers differing from Casbin's, of {compared}: FastEnforcer by role "
        f"{wrong_by_role} (no inherited roles, no verb-* denies), FastEnforcer keyed with "
        f"the user asked {wrong_user_asked} (finds no rule reached through a role)"
    )
    print(
        f"Policy.load: {load_seconds:.2f} s; Casbin's first request in a new environment: "
        f"{statistics.median(warm_up):.2f} s (median over {len(warm_up)})"
    )


def _explained(policy: Policy, request: Request) -> list[str]:
    """The fields of the rule LAM names for ``request``, as Casbin's enforce_ex lists them."""
    reason = policy.check(*request)[1]
    return reason[3:].split(", ") if reason.startswith("p, ") else []


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--casbin-sample", type=int, default=8)
    arguments = parser.parse_args()
    main(arguments.requests, arguments.rounds, arguments.casbin_sample)
