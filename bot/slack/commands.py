"""``/lam``: parsing its text into a command, and answering it to the person alone.

Every answer is ephemeral. Listings are cut into pages; a "Next page" button carries the
command text and the page number, and a click runs the command again as the clicker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from bot.errors import InvalidInput, UnknownAction
from bot.lifecycle import DESCRIPTIONS
from bot.models import Verb
from bot.slack.blocks import (
    PAGE,
    Block,
    action_rows,
    code,
    context,
    escape,
    history_rows,
    plan_message,
    section,
    who,
)
from bot.slack.front import SlackFront
from bot.slack.home import awaiting_decision_by
from bot.slack.identity import Identity, subject_for
from bot.text import normalise

MAX_COMMAND_CHARS = 500
MAX_HISTORY = 100
MENTION = re.compile(r"^<@(?P<user>[UW][A-Z0-9]{1,31})(?:\|[^>]*)?>$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

USAGE = """\
*`/lam` commands* (answers are only for you):
• `/lam help` — this list
• `/lam history [@user] [N]` — recent requests, yours unless you name someone
• `/lam show ID` — one request, its plan and results
• `/lam pending` — requests waiting for your approval
• `/lam cancel ID` — cancel a request that has not started
• `/lam actions` — what LAM can do
• `/lam whoami` — who LAM thinks you are, your groups and roles here
• `/lam can @user ACTION [ENV]` — what policy lets someone do
To ask for something, mention me in a channel or message me."""


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class History:
    user: str | None = None
    limit: int = 20


@dataclass(frozen=True)
class Show:
    request_id: str


@dataclass(frozen=True)
class Pending:
    pass


@dataclass(frozen=True)
class Cancel:
    request_id: str


@dataclass(frozen=True)
class Actions:
    pass


@dataclass(frozen=True)
class WhoAmI:
    pass


@dataclass(frozen=True)
class Can:
    user: str
    action: str
    environment: str | None = None


Command = Help | History | Show | Pending | Cancel | Actions | WhoAmI | Can
SIMPLE: dict[str, Command] = {"pending": Pending(), "actions": Actions(), "whoami": WhoAmI()}


@dataclass(frozen=True)
class Reply:
    text: str
    blocks: list[Block]


def parse(text: str) -> Command:
    """The command in ``/lam`` text; ``InvalidInput`` says what was wrong and what works."""
    words = normalise(text, what="the command", max_chars=MAX_COMMAND_CHARS).split()
    if not words or words[0].lower() in ("help", "?"):
        return Help()
    name, args = words[0].lower(), words[1:]
    if name == "history" and len(args) <= 2:
        user = _user(args.pop(0)) if args and args[0].startswith("<@") else None
        limit = _count(args.pop(0)) if args else 20
        if not args:
            return History(user, limit)
    elif name in ("show", "cancel") and len(args) == 1:
        request_id = args[0]
        if not REQUEST_ID.match(request_id):
            raise InvalidInput(f"{request_id!r} is not a request id; see `/lam history`")
        return Show(request_id) if name == "show" else Cancel(request_id)
    elif name in ("pending", "actions", "whoami") and not args:
        return SIMPLE[name]
    elif name == "can" and len(args) in (2, 3):
        return Can(_user(args[0]), args[1], args[2].lower() if len(args) == 3 else None)
    raise InvalidInput(f"`/lam {text.strip()[:80]}` is not a command I know; try `/lam help`")


def _user(word: str) -> str:
    match = MENTION.match(word)
    if match is None:
        raise InvalidInput(
            f"{word!r} is not a mention; pick the person from the @ menu so Slack sends their id"
        )
    return match["user"]


def _count(word: str) -> int:
    if not word.isdigit() or not 1 <= int(word) <= MAX_HISTORY:
        raise InvalidInput(f"{word!r} is not a number of requests from 1 to {MAX_HISTORY}")
    return int(word)


def page_value(text: str, page: int) -> str:
    """What a "Next page" button carries: the command text and the page; never who clicked."""
    return json.dumps({"c": text[:MAX_COMMAND_CHARS], "p": page}, separators=(",", ":"))


def parse_page_value(value: object) -> tuple[str, int]:
    try:
        parsed = json.loads(value) if isinstance(value, str) and len(value) <= 2000 else None
    except ValueError:
        parsed = None
    if (
        isinstance(parsed, dict)
        and isinstance(parsed.get("c"), str)
        and isinstance(parsed.get("p"), int)
        and 1 <= parsed["p"] <= 1000
    ):
        return parsed["c"], parsed["p"]
    raise InvalidInput("that page button is not one LAM made; run the command again")


async def answer(
    front: SlackFront, identity: Identity, text: str, channel: str | None, page: int = 1
) -> Reply:
    """Run ``/lam text`` as ``identity`` and render the answer (page ``page`` of a listing)."""
    command = parse(text)
    engine = front.engine
    if isinstance(command, Help):
        return Reply("LAM commands", [section(USAGE)])
    if isinstance(command, History):
        user = command.user or identity.user_id
        requester = subject_for(identity.team_id, user)
        records = await engine.history(requester=requester, limit=command.limit)
        title = f"Recent requests of {who(requester)}"
        return _paged(title, history_rows(records), text, page, front.options.page_size)
    if isinstance(command, Show):
        fallback, blocks = plan_message(await engine.show(command.request_id))
        return Reply(fallback, blocks)
    if isinstance(command, Cancel):
        groups = await front.groups_of(identity)
        record = await engine.cancel(command.request_id, identity.subject, groups=groups)
        front.tracker.touch(record.id)
        return Reply(
            f"Request {record.id} {DESCRIPTIONS[record.state]}",
            [section(f"Request {code(record.id)} is {DESCRIPTIONS[record.state]}.")],
        )
    if isinstance(command, Pending):
        groups = await front.groups_of(identity)
        waiting = await awaiting_decision_by(front, identity.subject, MAX_HISTORY, groups)
        title = "Waiting for your approval"
        return _paged(title, history_rows(waiting), text, page, front.options.page_size)
    if isinstance(command, Actions):
        rows = action_rows(engine.catalog)
        return _paged("What LAM can do", rows, text, page, front.options.page_size)
    if isinstance(command, WhoAmI):
        return await _whoami(front, identity, channel)
    return await _can(front, identity, command, channel)


async def _whoami(front: SlackFront, identity: Identity, channel: str | None) -> Reply:
    engine = front.engine
    bound = front.environment_of(channel)
    environment = bound or engine.options.default_environment
    groups = await front.groups_of(identity)
    roles = engine.policy.roles_of(identity.subject, environment, groups=groups)
    lines = [
        f"You are {code(identity.subject)} to policy (team and user id, never a name).",
        f"Slack groups: {', '.join(code(g) for g in groups) or 'none'}",
        f"Roles in *{escape(environment)}*: {', '.join(code(r) for r in roles) or 'none'}",
        f"This channel is bound to *{escape(bound)}*."
        if bound
        else "This channel is not bound to an environment: requests name one, or use the default.",
    ]
    return Reply(f"You are {identity.subject}", [section("\n".join(lines))])


async def _can(front: SlackFront, identity: Identity, command: Can, channel: str | None) -> Reply:
    engine = front.engine
    if command.action not in engine.catalog:
        raise UnknownAction(command.action, engine.catalog.closest(command.action))
    environment = command.environment or front.environment_of(channel)
    environment = environment or engine.options.default_environment
    if environment not in engine.options.environments:
        known = ", ".join(engine.options.environments)
        raise InvalidInput(f"unknown environment {environment!r}; known: {known}")
    subject = subject_for(identity.team_id, command.user)
    groups = await front.directory.groups_of(command.user)
    lines = [f"{who(subject)} and {code(command.action)} in *{escape(environment)}*:"]
    verbs: tuple[Verb, ...] = ("run", "request", "approve")
    for verb in verbs:
        allowed, rule = engine.policy.check(
            subject, environment, command.action, "*", verb, groups=groups
        )
        mark = ":white_check_mark:" if allowed else ":no_entry:"
        lines.append(f"{mark} *{verb}*: {code(rule[:500])}")
    bound = front.environment_of(channel)
    if bound and bound != environment:
        lines.append(f"Requests made in this channel act only in *{escape(bound)}*.")
    return Reply(f"What {subject} may do with {command.action}", [section("\n".join(lines))])


def _paged(title: str, rows: list[str], text: str, page: int, size: int) -> Reply:
    pages = max(1, -(-len(rows) // size))
    page = min(max(1, page), pages)
    shown = rows[(page - 1) * size : page * size]
    blocks: list[Block] = [section(f"*{title}*")]
    blocks.append(section("\n".join(shown)) if shown else context("Nothing to show."))
    if pages > 1:
        blocks.append(context(f"page {page} of {pages}"))
        buttons = []
        if page > 1:
            buttons.append(_page_button("‹ Previous", text, page - 1))
        if page < pages:
            buttons.append(_page_button("Next page ›", text, page + 1))
        blocks.append({"type": "actions", "block_id": "lam_pages", "elements": buttons})
    return Reply(title, blocks)


def _page_button(label: str, text: str, page: int) -> Block:
    return {
        "type": "button",
        "action_id": f"{PAGE}.{page}",
        "text": {"type": "plain_text", "text": label},
        "value": page_value(text, page),
    }
