"""Block Kit renderings of requests: what ``bot.console`` prints, laid out for Slack.

Everything a person typed or a connector printed is escaped (``& < >``), so text can never
turn into a mention, a channel ping or a link, and clipped to Block Kit's limits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from bot.approvals import approvals_needed, valid_approvals
from bot.audit import Redactor
from bot.lifecycle import DESCRIPTIONS
from bot.models import (
    TERMINAL_STATES,
    AuditEvent,
    Decision,
    RequestRecord,
    Step,
    StepResult,
    StepStatus,
)
from bot.slack.identity import slack_user
from connectors import Action

Block = dict[str, Any]

APPROVE = "lam.approve"
REJECT = "lam.reject"
PAGE = "lam.page"
ACTIONS_BLOCK = "lam_actions"
SECTION_LIMIT = 3000
HEADER_LIMIT = 150
INLINE_OUTPUT = 2500
"""Characters of a step's output shown in the thread; longer output goes up as a file."""
MAX_STEP_BLOCKS = 35
"""Steps rendered one block each; Slack refuses a message of more than 50 blocks."""

STATUS_ICONS: dict[StepStatus | str, str] = {
    "waiting for approval": ":hourglass:",
    "queued": ":hourglass_flowing_sand:",
    "running": ":arrows_counterclockwise:",
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "skipped": ":fast_forward:",
    "cancelled": ":no_entry_sign:",
    "interrupted": ":warning:",
    "not run": ":heavy_minus_sign:",
}
DECISION_LABELS = {
    "allow": ":large_green_circle: allowed",
    "needs_approval": ":large_yellow_circle: needs approval",
    "deny": ":red_circle: denied",
}
STATE_ICONS = {
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "denied": ":no_entry:",
    "rejected": ":no_entry:",
    "expired": ":hourglass:",
    "cancelled": ":no_entry_sign:",
    "unplanned": ":grey_question:",
    "awaiting_approval": ":raising_hand:",
    "clarifying": ":speech_balloon:",
    "executing": ":arrows_counterclockwise:",
}
MAX_TURNS_SHOWN = 5
"""Earlier questions and answers shown on a plan message, the latest ones."""

_REDACTOR = Redactor()


def escape(text: str) -> str:
    """Text as Slack shows it literally: its three control characters as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def code(text: str) -> str:
    """``text`` as inline code, escaped; backticks inside would end the span early."""
    return "`" + escape(text.replace("`", "'")) + "`"


def code_block(text: str, limit: int) -> str:
    body = escape(clip(text, limit).replace("```", "`\u02cb`"))
    return f"```{body}```"


def who(subject: str, labels: Mapping[str, str] | None = None) -> str:
    """A subject as Slack shows it: a mention for a Slack user, the group label, or code."""
    if labels and subject in labels:
        return labels[subject]
    user = slack_user(subject)
    return f"<@{user}>" if user else code(subject)


def mrkdwn(text: str) -> Block:
    return {"type": "mrkdwn", "text": clip(text, SECTION_LIMIT)}


def plain(text: str, limit: int = HEADER_LIMIT) -> Block:
    return {"type": "plain_text", "text": clip(text, limit) or " ", "emoji": True}


def section(text: str) -> Block:
    return {"type": "section", "text": mrkdwn(text)}


def context(*texts: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text) for text in texts[:10]]}


def header(text: str) -> Block:
    return {"type": "header", "text": plain(text)}


def slack_date(moment: datetime) -> str:
    """A time every reader sees in their own time zone, with a UTC fallback."""
    fallback = f"{moment:%Y-%m-%d %H:%M} UTC"
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def decision_buttons(request_id: str) -> Block:
    """Approve and Reject; the value names the request only, never who may click."""
    approve_confirm = {
        "title": plain("Approve this request?", 100),
        "text": plain(f"Request {request_id} runs once enough approvers agree.", 300),
        "confirm": plain("Approve", 30),
        "deny": plain("Not yet", 30),
    }
    return {
        "type": "actions",
        "block_id": ACTIONS_BLOCK,
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE,
                "text": plain("Approve", 75),
                "style": "primary",
                "value": request_id,
                "confirm": approve_confirm,
            },
            {
                "type": "button",
                "action_id": REJECT,
                "text": plain("Reject…", 75),
                "style": "danger",
                "value": request_id,
            },
        ],
    }


def step_status(record: RequestRecord, result: StepResult | None) -> str:
    """``queued`` → ``running`` → ``succeeded``/``failed``, with the duration once it ended."""
    if result is None:
        if record.state == "awaiting_approval":
            return "waiting for approval"
        return "not run" if record.state in TERMINAL_STATES else "queued"
    if result.status == "pending":
        return "queued"
    if result.started_at and result.finished_at:
        seconds = (result.finished_at - result.started_at).total_seconds()
        return f"{result.status} in {seconds:.2f}s"
    return result.status


def _step_block(
    record: RequestRecord, step: Step, decision: Decision | None, result: StepResult | None
) -> Block:
    masked = _REDACTOR.json(dict(step.args))
    assert isinstance(masked, dict)
    args = " ".join(f"{key}={code(str(value))}" for key, value in masked.items() if value)
    status = step_status(record, result)
    icon = STATUS_ICONS.get(status.split(" in ")[0], "")
    lines = [f"*{escape(step.id)}* {code(step.action)} {args}".rstrip()]
    verdict = DECISION_LABELS[decision.decision] if decision else "undecided"
    lines.append(f"risk *{step.risk}* · {verdict} · {icon} {escape(status)}")
    if decision is not None:
        lines.append(f"rule: {code(clip(decision.rule, 600))}")
    if result is not None and result.error:
        lines.append(f"error: {escape(clip(result.error, 600))}")
    if result is not None and result.attempts > 1:
        lines.append(f"attempts: {result.attempts}")
    return section("\n".join(lines))


def plan_message(
    record: RequestRecord, *, labels: Mapping[str, str] | None = None
) -> tuple[str, list[Block]]:
    """The fallback text and blocks of a request's plan message, as it stands now.

    ``labels`` turns approver subjects into Slack mentions (``role:lead`` → a user group).
    """
    state = DESCRIPTIONS[record.state]
    where = f" in *{escape(record.intent.environment)}*" if record.intent else ""
    asked = escape(clip(record.request.text, 500))
    blocks: list[Block] = [
        header(f"Request {record.id}: {state}"),
        context(f"{who(record.request.requester)} asked{where}: “{asked}”"),
    ]
    for turn in record.conversation[-MAX_TURNS_SHOWN:]:
        question, answer = escape(clip(turn.question, 300)), escape(clip(turn.answer, 300))
        blocks.append(context(f"asked: “{question}” answered: “{answer}”"))
    if record.state == "clarifying" and record.question:
        blocks.append(question_block(record))
    if record.plan is not None and record.plan.dry_run:
        blocks.append(context(":test_tube: dry run: actions report what they would do"))
    decisions = {d.step_id: d for d in record.decisions}
    steps = record.plan.steps if record.plan else ()
    for step in steps[:MAX_STEP_BLOCKS]:
        blocks.append(_step_block(record, step, decisions.get(step.id), record.result_of(step.id)))
    if len(steps) > MAX_STEP_BLOCKS:
        hidden = len(steps) - MAX_STEP_BLOCKS
        blocks.append(context(f"… and {hidden} more steps: `/lam show {record.id}`"))
    if record.state == "awaiting_approval":
        have, need = len(valid_approvals(record)), approvals_needed(record)
        approvers = sorted({a for d in record.decisions for a in d.approvers})
        named = ", ".join(who(a, labels) for a in approvers) or "nobody (no rule names one)"
        deadline = f" by {slack_date(record.expires_at)}" if record.expires_at else ""
        blocks.append(
            section(f":raising_hand: needs {need - have} more approval(s){deadline} from {named}")
        )
        blocks.append(decision_buttons(record.id))
    if record.approvals:
        blocks.append(context(*(_approval_line(a) for a in record.approvals)))
    if record.reason and record.state not in ("succeeded", "rejected", "cancelled"):
        blocks.append(section(f"*reason:* {escape(clip(record.reason, 2000))}"))
    if record.suggestions:
        closest = ", ".join(code(s) for s in record.suggestions[:10])
        blocks.append(context(f"closest actions: {closest}"))
    footer = [f"request {code(record.id)}"]
    if record.plan is not None:
        footer.append(f"plan {code(record.plan.plan_hash[:12])}")
    blocks.append(context(" · ".join(footer)))
    text = f"{STATE_ICONS.get(record.state, '')} Request {record.id}: {state} — {asked}"
    return clip(text.strip(), 3000), blocks


def question_block(record: RequestRecord) -> Block:
    """The model's question about ``record``, and who may answer it, and how."""
    asker = who(record.request.requester)
    deadline = f" by {slack_date(record.expires_at)}" if record.expires_at else ""
    question = escape(clip(record.question or "", 2000))
    return section(
        f":speech_balloon: *{question}*\n{asker}: reply in this thread to answer{deadline};"
        " only you can."
    )


def _approval_line(approval: Any) -> str:
    mark = ":heavy_check_mark:" if approval.verdict == "approved" else ":heavy_multiplication_x:"
    why = f": {escape(clip(approval.reason, 300))}" if approval.reason else ""
    return f"{mark} {approval.verdict} by {who(approval.approver)}{why}"


def placeholder(request_id: str, text: str) -> tuple[str, list[Block]]:
    """The message posted before planning starts, so progress has a message to update."""
    line = f":thought_balloon: Planning request {code(request_id)}: “{escape(clip(text, 500))}”"
    return f"Planning request {request_id}", [section(line)]


def long_outputs(record: RequestRecord) -> list[StepResult]:
    """Results whose output is too long for the thread; they are uploaded as files."""
    return [r for r in record.results if len(r.output) > INLINE_OUTPUT]


def results_message(record: RequestRecord) -> tuple[str, list[Block]]:
    """How the request ended, with each step's output (long output only named: it is a file)."""
    icon = STATE_ICONS.get(record.state, "")
    summary = f"{icon} Request {code(record.id)} {DESCRIPTIONS[record.state]}"
    if record.state == "failed" and record.reason:
        summary += f": {escape(clip(record.reason, 1000))}"
    blocks: list[Block] = [section(summary)]
    for result in record.results[:MAX_STEP_BLOCKS]:
        status = escape(step_status(record, result))
        title = f"*{escape(result.step_id)}* {code(result.action)} {status}"
        if len(result.output) > INLINE_OUTPUT:
            blocks.append(section(f"{title}\noutput: {len(result.output):,} characters, attached"))
        elif result.output:
            blocks.append(section(f"{title}\n{code_block(result.output, INLINE_OUTPUT)}"))
        else:
            blocks.append(section(title))
    text = f"Request {record.id} {DESCRIPTIONS[record.state]}"
    return text, blocks


def history_rows(records: Iterable[RequestRecord]) -> list[str]:
    return [
        f"{code(r.id)} {r.request.received_at:%Y-%m-%d %H:%M} *{DESCRIPTIONS[r.state]}*"
        f" {who(r.request.requester)} “{escape(clip(r.request.text, 80))}”"
        for r in records
    ]


def action_rows(actions: Iterable[Action]) -> list[str]:
    rows = []
    for action in actions:
        dry = ", dry-run" if action.supports_dry_run else ""
        examples = "; ".join(f"“{escape(e)}”" for e in action.examples[:2])
        row = f"{code(action.id)} ({action.risk}{dry}) {escape(action.description)}"
        rows.append(f"{row}\n      e.g. {examples}" if examples else row)
    return rows


def audit_line(event: AuditEvent) -> str:
    """One audit event in one compact line; secrets were masked before it was stored."""
    parts = [f"`{event.seq}`", f"{event.at:%H:%M:%S}", f"*{event.kind}*"]
    if event.request_id:
        parts.append(code(event.request_id))
    parts.append(f"by {code(event.actor)}")
    if event.state:
        parts.append(f"→ {event.state}")
    if event.step is not None:
        parts.append(f"step {code(event.step.step_id)} {event.step.status}")
    if event.approval is not None:
        parts.append(f"{event.approval.verdict}")
    if event.reason:
        parts.append(f"“{escape(clip(event.reason, 300))}”")
    return " ".join(parts)
