"""``lam``: the command line. Every command is a thin shell over the engine."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import structlog
import typer

from bot import console
from bot.audit import Redactor
from bot.config import Settings, load_settings
from bot.engine import Engine
from bot.errors import ConfigError, InvalidInput, LamError
from bot.lifecycle import DESCRIPTIONS
from bot.logs import configure_logging
from bot.models import Request, RequestRecord, Step
from bot.policy import Policy
from bot.policy_reload import PolicyReloader
from bot.policy_tests import run_policy_tests
from bot.runtime import run_worker, worker_names
from bot.text import as_subject, normalise
from bot.wiring import build_catalog, build_planner, close_connectors, open_engine, policy_dir
from connectors import Catalog

app = typer.Typer(
    help="LAM: ask for operations work in plain words; policy, approvals and audit decide.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
policy_app = typer.Typer(help="Check and test the access policy.", no_args_is_help=True)
audit_app = typer.Typer(help="Read and verify the audit trail.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
config_app = typer.Typer(help="Check this installation's configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

T = TypeVar("T")

log = structlog.get_logger("lam.cli")

AsUser = Annotated[str, typer.Option("--as", help="Who you are, e.g. alice (user:alice).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
HealthPort = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=65535,
        envvar="LAM_HEALTH_PORT",
        help="Port for /healthz, /readyz and /metrics (lam serve over HTTP: also --port).",
    ),
]


REDACTOR = Redactor()
"""One redactor for the process: the logs and the engine mask the same secrets, the
connectors' among them once they have started."""


def _settings() -> Settings:
    settings = load_settings()
    REDACTOR.add(settings.secrets())
    configure_logging(
        log_format=settings.lam_log_format, level=settings.lam_log_level, redactor=REDACTOR
    )
    return settings


async def _started_catalog(settings: Settings) -> Catalog:
    """The connectors' actions, for commands that only read them; nothing stays open."""
    catalog = await build_catalog(settings, REDACTOR)
    await close_connectors(catalog)
    return catalog


def _fail(error: LamError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(error.exit_code)


def _with_engine(work: Callable[[Engine], Awaitable[T]]) -> T:
    """Open the engine, run ``work``, close it; a LAM error becomes one line and an exit code."""

    async def main() -> T:
        engine = await open_engine(_settings(), REDACTOR)
        try:
            return await work(engine)
        finally:
            await engine.aclose()

    try:
        return asyncio.run(main())
    except LamError as error:
        raise _fail(error) from None


def _subject(name: str) -> str:
    try:
        return as_subject(name)
    except InvalidInput as error:
        raise _fail(error) from None


def _print_record(record: RequestRecord, as_json: bool) -> None:
    """Print a request; its outcome decides the exit code, with one error line if it failed."""
    typer.echo(console.dumps(console.as_json(record)) if as_json else console.render(record))
    code = console.exit_code(record)
    if code:
        typer.echo(
            f"error: request {record.id} {DESCRIPTIONS[record.state]}: {record.reason}", err=True
        )
    raise typer.Exit(code)


@app.command()
def ask(
    text: Annotated[str, typer.Argument(help="What you need, e.g. 'restart web in staging'.")],
    as_user: AsUser,
    env: Annotated[str | None, typer.Option(help="The environment to act on.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Change nothing.")] = False,
    json: Json = False,
) -> None:
    """Ask LAM for something; it runs at once if policy allows, else waits for approval."""
    request = Request(text=text, requester=_subject(as_user), environment=env, dry_run=dry_run)
    _print_record(_with_engine(lambda engine: engine.ask(request)), json)


@app.command()
def answer(
    request_id: str,
    text: Annotated[str, typer.Argument(help="Your answer to LAM's question.")],
    as_user: AsUser,
    json: Json = False,
) -> None:
    """Answer LAM's question about your request; the same request is planned again."""
    answerer = _subject(as_user)
    _print_record(_with_engine(lambda engine: engine.answer(request_id, answerer, text)), json)


@app.command()
def approve(request_id: str, as_user: AsUser, json: Json = False) -> None:
    """Approve someone else's request; it runs when it has all the approvals it needs."""
    approver = _subject(as_user)
    _print_record(_with_engine(lambda engine: engine.approve(request_id, approver)), json)


@app.command()
def reject(
    request_id: str,
    as_user: AsUser,
    reason: Annotated[str, typer.Option(help="Why, for the requester and the audit trail.")],
    json: Json = False,
) -> None:
    """Reject a request that waits for approval."""
    approver = _subject(as_user)
    record = _with_engine(lambda engine: engine.reject(request_id, approver, reason))
    typer.echo(console.dumps(console.as_json(record)) if json else console.render(record))


@app.command()
def cancel(request_id: str, as_user: AsUser, json: Json = False) -> None:
    """Cancel a request that has not started running."""
    actor = _subject(as_user)
    record = _with_engine(lambda engine: engine.cancel(request_id, actor))
    typer.echo(console.dumps(console.as_json(record)) if json else console.render(record))


@app.command()
def show(request_id: str, json: Json = False) -> None:
    """Show one request: its plan, decisions, approvals and results."""
    record = _with_engine(lambda engine: engine.show(request_id))
    typer.echo(console.dumps(console.as_json(record)) if json else console.render(record))


@app.command()
def history(
    user: Annotated[str | None, typer.Option(help="Only this user's requests.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    json: Json = False,
) -> None:
    """Recent requests, newest first."""
    requester = _subject(user) if user else None
    records = _with_engine(lambda engine: engine.history(requester=requester, limit=limit))
    if json:
        typer.echo(console.dumps([console.as_json(r) for r in records]))
    else:
        typer.echo(console.render_history(records))


@app.command()
def actions(json: Json = False) -> None:
    """What LAM can do here, with example phrasings."""

    async def listing(engine: Engine) -> str:
        if json:
            return console.dumps(
                [
                    {
                        "id": a.id,
                        "description": a.description,
                        "risk": a.risk,
                        "examples": list(a.examples),
                        "supports_dry_run": a.supports_dry_run,
                        "params": a.params.model_json_schema(),
                    }
                    for a in engine.catalog
                ]
            )
        return console.render_actions(engine.catalog)

    typer.echo(_with_engine(listing))


@app.command()
def chat(as_user: AsUser) -> None:
    """A conversation with LAM in the terminal."""
    requester = _subject(as_user)
    settings = _settings()

    async def converse(engine: Engine) -> None:
        risks = {action.id: action.risk for action in engine.catalog}
        reloader = PolicyReloader(engine, policy_dir(settings), risks)
        stop = asyncio.Event()
        watcher = asyncio.create_task(reloader.run(stop, settings.lam_policy_reload_seconds))
        try:
            await console.chat(engine, requester, input, sys.stdout)
        finally:
            stop.set()
            await watcher

    _with_engine(converse)


@app.command()
def worker(
    name: Annotated[
        str | None, typer.Option(help="This worker's name in the queue; default host-pid.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="How many jobs this process runs at once.")
    ] = 1,
    health_port: HealthPort = None,
    host: Annotated[str, typer.Option(help="Interface the health port listens on.")] = "0.0.0.0",  # noqa: S104
) -> None:
    """Run approved requests from the Redis job queue until SIGTERM or Ctrl-C.

    On SIGTERM it takes no new job and lets the one in progress finish for
    LAM_SHUTDOWN_GRACE_SECONDS; a second signal or the end of the grace hands it back to
    the queue unfinished. It exits 0 either way.
    """
    try:
        settings = _settings()
        grace = settings.lam_shutdown_grace_seconds
    except LamError as error:
        raise _fail(error) from None
    if settings.redis_url is None:
        raise _fail(
            ConfigError(
                "lam worker needs REDIS_URL: without Redis, approved requests run in the"
                " process that approves them; set REDIS_URL=redis://host:6379/0"
            )
        )
    names = worker_names(name, concurrency)
    _with_engine(
        lambda engine: run_worker(
            engine, settings, workers=names, grace=grace, health_port=health_port, host=host
        )
    )


def _load_policy() -> Policy:
    try:
        return Policy.load(policy_dir(_settings()))
    except LamError as error:
        raise _fail(error) from None


@policy_app.command("check")
def policy_check(
    user: str,
    env: str,
    action: str,
    resource: Annotated[str, typer.Option(help="The target, e.g. a service.")] = "*",
    json: Json = False,
) -> None:
    """Would USER's ACTION in ENV run, need approval, or be denied — and by which rule?"""
    subject = _subject(user)
    policy = _load_policy()
    try:
        env, action = normalise(env, what="ENV"), normalise(action, what="ACTION")
        resource = normalise(resource, what="--resource")
        catalog = asyncio.run(_started_catalog(_settings()))
    except LamError as error:
        raise _fail(error) from None
    # A destructive action needs approval in a protected environment, so the risk its
    # connector declares matters; an action this installation lacks is checked as 'read'.
    risk = catalog.get(action).risk if action in catalog else "read"
    step = Step(id="check", action=action, args={}, environment=env, resource=resource, risk=risk)
    decision = policy.decide(subject, step)
    if json:
        typer.echo(console.dumps(decision.model_dump(mode="json")))
    else:
        typer.echo(f"{decision.decision}: {decision.rule}")
        if decision.approvers:
            typer.echo(f"approvers: {', '.join(decision.approvers)}")


@policy_app.command("test")
def policy_test() -> None:
    """Run the policy's test cases (policies/tests/*.yaml); exit 1 on any mismatch."""
    settings = _settings()
    try:
        directory = policy_dir(settings)
        catalog = asyncio.run(_started_catalog(settings))
        risks = {action.id: action.risk for action in catalog}
        results = run_policy_tests(Policy.load(directory), directory / "tests", risks)
    except LamError as error:
        raise _fail(error) from None
    failed = [r for r in results if not r.passed]
    for result in failed:
        typer.echo(f"FAIL {result.describe()}", err=True)
    typer.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if not results:
        raise _fail(ConfigError(f"no policy tests found in {str(directory / 'tests')!r}"))
    raise typer.Exit(1 if failed else 0)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit chain; exit 1 naming the first event that does not verify."""
    count = _with_engine(lambda engine: engine.verify_audit())
    typer.echo(f"audit chain intact: {count} events")


@audit_app.command("tail")
def audit_tail(
    n: Annotated[int, typer.Option("-n", help="How many events.", min=1)] = 20,
) -> None:
    """The most recent audit events."""

    async def tail(engine: Engine) -> list[str]:
        head, _ = await engine.store.audit_head()
        return [console.render_event(e) async for e in engine.store.audit_events(max(0, head - n))]

    for line in _with_engine(tail):
        typer.echo(line)


@app.command()
def serve(
    port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, help="HTTP port: /slack/events, /healthz, /readyz, /metrics."
        ),
    ] = 3000,
    health_port: HealthPort = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",  # noqa: S104
) -> None:
    """Run the Slack front: Socket Mode when SLACK_APP_TOKEN is set, else HTTP on --port.

    On SIGTERM it stops taking Slack events, lets work in progress finish for
    LAM_SHUTDOWN_GRACE_SECONDS, posts the audit events not yet posted, and exits 0.
    """
    from bot.slack.server import serve as serve_slack

    try:
        settings = _settings()
        asyncio.run(
            serve_slack(settings, port=port, health_port=health_port, host=host, redactor=REDACTOR)
        )
    except LamError as error:
        raise _fail(error) from None


@app.command("eval")
def eval_corpus(
    corpus: Annotated[
        Path, typer.Argument(help="Requests with expected plans, e.g. evals/corpus.yaml.")
    ],
    min_accuracy: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Exit 1 below this overall accuracy.")
    ] = 0.0,
    json: Json = False,
) -> None:
    """Score the planner on a corpus of requests; nothing is decided or run."""
    from bot.eval import EvalReport, run_eval

    settings = _settings()

    async def evaluate() -> EvalReport:
        catalog = await build_catalog(settings, REDACTOR)
        planner = build_planner(settings, REDACTOR)
        try:
            return await run_eval(corpus, planner, catalog)
        finally:
            await planner.aclose()
            await close_connectors(catalog)

    try:
        report = asyncio.run(evaluate())
    except LamError as error:
        raise _fail(error) from None
    typer.echo(console.dumps(report.model_dump(mode="json")) if json else report.render())
    raise typer.Exit(1 if report.overall.accuracy < min_accuracy else 0)


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo's LAM_HOME afterwards.")] = False,
) -> None:
    """Walk through the whole flow in a throw-away LAM_HOME: run, approve, deny, reject."""
    from bot.demo import run_demo

    try:
        _settings()  # logging as configured; the demo makes its own LAM_HOME
        asyncio.run(run_demo(typer.echo, keep=keep))
    except LamError as error:
        raise _fail(error) from None


@app.command("connectors")
def list_connectors(json: Json = False) -> None:
    """The configured connector instances: ready with their actions, or failed and why."""
    from bot.config_check import ROWS, connector_rows, render_connectors

    try:
        rows = connector_rows(asyncio.run(_started_catalog(_settings())))
    except LamError as error:
        raise _fail(error) from None
    typer.echo(ROWS.dump_json(rows, indent=2).decode() if json else render_connectors(rows))
    raise typer.Exit(1 if any(row.state == "failed" for row in rows) else 0)


@config_app.command("check")
def config_check() -> None:
    """Validate the settings and lam.yaml (nothing starts); print them with secrets masked."""
    from bot.config_check import check_config, effective_config

    try:
        settings = _settings()
        settings_dir = policy_dir(settings)
        instances = check_config(settings)
    except LamError as error:
        raise _fail(error) from None
    effective = effective_config(settings, instances)
    effective["policy_dir"] = str(settings_dir)
    typer.echo(console.dumps(effective))
    problems = [instance.problem for instance in instances if instance.problem]
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    raise typer.Exit(2 if problems else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
