"""``/lam``: every answer is ephemeral, listings are paged, and identity comes from the payload."""

from __future__ import annotations

import json
from typing import Any

from tests.slack.conftest import Lam, texts


async def run(lam: Lam, text: str, *, user: str = "U0ALICE", channel: str = "C0OPS") -> str:
    """Send ``/lam text`` and return everything its ephemeral answer shows."""
    before = len(lam.sim.response_posts)
    assert await lam.command(text, user=user, channel=channel) == 200
    await lam.idle()
    [post] = lam.sim.response_posts[before:]
    assert post.body["response_type"] == "ephemeral"
    return shown(post.body)


def shown(body: Any) -> str:
    return "\n".join([str(body.get("text", "")), json.dumps(body.get("blocks") or [])])


async def ask(lam: Lam, text: str, channel: str) -> str:
    assert await lam.event(lam.sim.app_mention(text, channel=channel)) == 200
    await lam.sim.wait_for_call("chat.update", lambda c: text.split()[-1] in texts(c))
    await lam.idle()
    return (await lam.engine.store.history(limit=1))[0].id


async def test_help_and_unknown_commands(lam: Lam) -> None:
    """Help lists the commands; an unknown or malformed one says what works."""
    assert "/lam can @user ACTION [ENV]" in await run(lam, "")
    assert "/lam pending" in await run(lam, "help")
    assert "not a command I know" in await run(lam, "launch rockets")
    assert "is not a mention" in await run(lam, "can bob test.restart prod")
    assert "not a request id" in await run(lam, "show ../../etc")


async def test_history_show_and_cancel(lam: Lam) -> None:
    """History lists a person's requests, show renders one, and the requester may cancel."""
    waiting = await ask(lam, "restart api", "C0PROD")
    mine = await run(lam, "history")
    assert waiting in mine and "awaiting approval" in mine
    assert waiting in await run(lam, "history <@U0ALICE|alice> 5", user="U0BOB")
    assert waiting not in await run(lam, "history", user="U0BOB")
    shown_plan = await run(lam, f"show {waiting}")
    assert "test.restart" in shown_plan and "lam.approve" in shown_plan
    assert "no request with id 'nope'" in await run(lam, "show nope")

    refused = await run(lam, f"cancel {waiting}", user="U0CAROL")
    assert "only the requester or an approver may cancel" in refused
    assert "is cancelled" in await run(lam, f"cancel {waiting}")
    assert (await lam.engine.store.get(waiting)).state == "cancelled"


async def test_pending_lists_what_the_caller_may_approve(lam: Lam) -> None:
    """Pending shows a lead the requests they may approve, and nobody their own."""
    waiting = await ask(lam, "restart api", "C0PROD")
    assert waiting in await run(lam, "pending", user="U0BOB")
    assert waiting not in await run(lam, "pending", user="U0ALICE")
    assert waiting not in await run(lam, "pending", user="U0CAROL")


async def test_actions_are_paged(lam: Lam) -> None:
    """A long listing shows one page with a Next button; the click shows the next page in place."""
    first = await run(lam, "actions")
    assert "page 1 of" in first and "test.crash" in first and "test.purge" not in first
    [post] = lam.sim.response_posts
    [button] = [
        element
        for block in post.body["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
    ]
    payload = lam.sim.block_actions_payload(
        button["action_id"], button["value"], user="U0ALICE", channel="C0OPS"
    )
    status, _ = await lam.interaction(payload)
    assert status == 200
    await lam.idle()
    replaced = lam.sim.response_posts[-1]
    assert replaced.body["replace_original"] is True
    assert "page 2 of" in shown(replaced.body) and "test.crash" not in shown(replaced.body)

    forged = lam.sim.block_actions_payload(
        "lam.page.9", '{"c": 1}', user="U0ALICE", channel="C0OPS"
    )
    await lam.interaction(forged)
    await lam.idle()
    assert "not one LAM made" in shown(lam.sim.response_posts[-1].body)


async def test_whoami_and_can(lam: Lam) -> None:
    """Whoami names the subject, groups and roles; can reports policy for someone else."""
    me = await run(lam, "whoami", user="U0BOB", channel="C0PROD")
    assert "user:T0LAMTEST/U0BOB" in me and "group:leads" in me and "role:lead" in me
    assert "bound to *prod*" in me

    can = await run(lam, "can <@U0ALICE> test.restart prod")
    assert ":no_entry: *run*" in can and ":white_check_mark: *request*" in can
    assert ":no_entry: *approve*" in can and "act only in *staging*" in can
    assert "did you mean 'test.restart'" in await run(lam, "can <@U0ALICE> test.restrat")
    assert "unknown environment 'mars'" in await run(lam, "can <@U0ALICE> test.noop mars")
