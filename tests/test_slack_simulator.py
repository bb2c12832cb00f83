"""The Slack simulator against the real slack_sdk and slack_bolt, all on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.context.say.async_say import AsyncSay
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.support.slack import (
    BOT_USER_ID,
    SIGNING_SECRET,
    SlackSigner,
    SlackSimulator,
    serve,
)


@pytest.fixture
async def sim() -> AsyncIterator[SlackSimulator]:
    async with SlackSimulator() as simulator:
        yield simulator


@pytest.fixture
async def client(sim: SlackSimulator) -> AsyncIterator[AsyncWebClient]:
    async with aiohttp.ClientSession() as session:
        yield AsyncWebClient(token=sim.bot_token, base_url=sim.api_url, session=session)


def lam_app(client: AsyncWebClient) -> AsyncApp:
    """A small bolt app in LAM's shape: it acks at once and answers through the Web API."""
    app = AsyncApp(client=client, signing_secret=SIGNING_SECRET)

    @app.event("app_mention")
    async def mentioned(event: dict[str, Any], say: AsyncSay, request: AsyncBoltRequest) -> None:
        retry = request.headers.get("x-slack-retry-num", ["0"])[0]
        await say(text=f"on it (retry {retry})", thread_ts=event["ts"])

    @app.event("message")
    async def direct_message(event: dict[str, Any], say: AsyncSay) -> None:
        await say(text=f"you said {event['text']!r}")

    @app.command("/lam")
    async def lam(ack: AsyncAck, command: dict[str, str], respond: AsyncRespond) -> None:
        await ack(text="working")
        await respond(text=f"done: {command['text']}")

    @app.action("approve")
    async def approve(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()
        await respond(
            replace_original=True, text=f"approved {action['value']} by {body['user']['id']}"
        )

    @app.view("lam_request")
    async def submitted(
        ack: AsyncAck, view: dict[str, Any], body: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        reason = view["state"]["values"]["reason"]["reason_input"]["value"]
        await client.chat_postMessage(channel=view["private_metadata"], text=f"request: {reason}")

    return app


@asynccontextmanager
async def connected(client: SocketModeClient) -> AsyncIterator[SocketModeClient]:
    """The Socket Mode client connected through apps.connections.open, closed on exit."""
    # slack_sdk leaves connect() and close() unannotated.
    await client.connect()  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        await client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
async def app_url(client: AsyncWebClient) -> AsyncIterator[str]:
    async with serve(lam_app(client).web_app(path="/slack/events")) as base_url:
        yield f"{base_url}/slack/events"


def test_signer_matches_slack_sdk() -> None:
    """SlackSigner produces the signature slack_sdk's verifier computes and accepts."""
    signer = SlackSigner("s3cret")
    body = "token=x&text=restart%20api"
    headers = signer.headers(body)
    verifier = SignatureVerifier("s3cret")
    timestamp = headers["X-Slack-Request-Timestamp"]
    assert headers["X-Slack-Signature"] == verifier.generate_signature(
        timestamp=timestamp, body=body
    )
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + "&x=1", headers)
    assert not SignatureVerifier("other").is_valid_request(body, headers)


async def test_post_and_update_message(sim: SlackSimulator, client: AsyncWebClient) -> None:
    """chat.postMessage returns a ts that chat.update edits, and both calls are recorded."""
    posted = await client.chat_postMessage(
        channel="C0OPS", text="plan", blocks=[{"type": "divider"}]
    )
    assert posted["ok"] and posted["channel"] == "C0OPS"
    assert posted["message"]["bot_id"] and posted["message"]["user"] == BOT_USER_ID

    updated = await client.chat_update(channel="C0OPS", ts=posted["ts"], text="plan approved")
    assert updated["ts"] == posted["ts"] and updated["text"] == "plan approved"

    message = sim.message("C0OPS", posted["ts"])
    assert (message.text, message.updates) == ("plan approved", 1)
    assert message.blocks == [{"type": "divider"}]
    [post] = sim.calls_to("chat.postMessage")
    assert post.args["blocks"] == [{"type": "divider"}]
    assert post.headers["Authorization"] == f"Bearer {sim.bot_token}"
    assert [call.method for call in sim.calls] == ["chat.postMessage", "chat.update"]


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing:UserWarning")
async def test_post_message_errors(client: AsyncWebClient) -> None:
    """chat.postMessage refuses an unknown channel, an archived one and an empty message."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"channel": "C0NOPE", "text": "x"}, "channel_not_found"),
        ({"channel": "C0OLD", "text": "x"}, "is_archived"),
        ({"channel": "C0OPS"}, "no_text"),
        ({"channel": "C0OPS", "text": "x" * 40_001}, "msg_too_long"),
    ]
    for arguments, error in cases:
        with pytest.raises(SlackApiError) as refused:
            await client.chat_postMessage(**arguments)
        assert refused.value.response["error"] == error
    with pytest.raises(SlackApiError, match="message_not_found"):
        await client.chat_update(channel="C0OPS", ts="1.000001", text="x")


async def test_thread_replies_and_dm_by_user_id(
    sim: SlackSimulator, client: AsyncWebClient
) -> None:
    """Replies are kept per thread, and a user id as channel posts to that user's DM."""
    parent = await client.chat_postMessage(channel="#ops", text="parent")
    await client.chat_postMessage(channel="C0OPS", text="reply", thread_ts=parent["ts"])
    assert [m.text for m in sim.messages("C0OPS", thread_ts=parent["ts"])] == ["reply"]
    assert [m.text for m in sim.messages("C0OPS")] == ["parent", "reply"]

    dm = await client.chat_postMessage(channel="U0ALICE", text="hi")
    assert dm["channel"] == "D0ALICE" and sim.message("D0ALICE", dm["ts"]).text == "hi"


async def test_wrong_token_is_invalid_auth(sim: SlackSimulator) -> None:
    """A wrong bot token gets invalid_auth, and the app-level token is not a bot token."""
    for token, error in [("xoxb-wrong", "invalid_auth"), (sim.app_token, "not_allowed_token_type")]:
        wrong = AsyncWebClient(token=token, base_url=sim.api_url)
        with pytest.raises(SlackApiError) as refused:
            await wrong.chat_postMessage(channel="C0OPS", text="x")
        assert refused.value.response.status_code == 200
        assert refused.value.response.data == {"ok": False, "error": error}
    assert [call.token for call in sim.calls] == ["xoxb-wrong", sim.app_token]
    assert sim.messages("C0OPS") == []


async def test_rate_limit_answers_429(sim: SlackSimulator, client: AsyncWebClient) -> None:
    """A rate-limited call gets HTTP 429 with Retry-After, and the next one succeeds."""
    sim.rate_limit("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as limited:
        await client.chat_postMessage(channel="C0OPS", text="x")
    assert limited.value.response.status_code == 429
    assert limited.value.response["error"] == "ratelimited"
    assert limited.value.response.headers["Retry-After"] == "7"
    assert (await client.chat_postMessage(channel="C0OPS", text="x"))["ok"]
    assert [call.status for call in sim.calls_to("chat.postMessage")] == [429, 200]


async def test_rate_limit_with_sdk_retry_handler(sim: SlackSimulator) -> None:
    """slack_sdk's rate-limit retry handler honours Retry-After and retries to success."""
    sim.rate_limit("chat.update", retry_after=0)
    retrying = AsyncWebClient(
        token=sim.bot_token,
        base_url=sim.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    posted = await retrying.chat_postMessage(channel="C0OPS", text="x")
    assert (await retrying.chat_update(channel="C0OPS", ts=posted["ts"], text="y"))["ok"]
    assert [call.status for call in sim.calls_to("chat.update")] == [429, 200]


async def test_fail_answers_the_error(sim: SlackSimulator, client: AsyncWebClient) -> None:
    """An injected error answers the next call only, with the given HTTP status."""
    sim.fail("users.info", "fatal_error", status=500)
    with pytest.raises(SlackApiError) as failed:
        await client.users_info(user="U0BOB")
    assert failed.value.response.status_code == 500
    assert failed.value.response["error"] == "fatal_error"
    assert (await client.users_info(user="U0BOB"))["user"]["name"] == "bob"


async def test_files_upload_v2_end_to_end(sim: SlackSimulator, client: AsyncWebClient) -> None:
    """files_upload_v2 gets an upload URL, uploads the bytes there and completes the share."""
    parent = await client.chat_postMessage(channel="C0OPS", text="logs follow")
    done = await client.files_upload_v2(
        content="line 1\nline 2\n",
        filename="restart.log",
        title="Restart log",
        channel="C0OPS",
        thread_ts=parent["ts"],
        initial_comment="output of restart",
    )
    upload = sim.uploads[done["file"]["id"]]
    assert upload.content == b"line 1\nline 2\n" and upload.length == len(upload.content)
    assert (upload.title, upload.channels, upload.completed) == ("Restart log", ["C0OPS"], True)
    methods = [call.method for call in sim.calls]
    assert methods[1:] == ["files.getUploadURLExternal", "files.completeUploadExternal"]
    [reply] = sim.messages("C0OPS", thread_ts=parent["ts"])
    assert reply.text == "output of restart" and reply.files[0]["id"] == upload.id


async def test_complete_upload_refuses_a_file_never_uploaded(client: AsyncWebClient) -> None:
    """files.completeUploadExternal refuses a file id whose bytes never arrived."""
    issued = await client.files_getUploadURLExternal(filename="a.txt", length=3)
    with pytest.raises(SlackApiError, match="file_not_found"):
        await client.files_completeUploadExternal(files=[{"id": issued["file_id"]}])


async def test_directory_lookups(sim: SlackSimulator, client: AsyncWebClient) -> None:
    """User groups, users, conversations and permalinks come from the seeded workspace."""
    groups = await client.usergroups_list(include_users=True)
    leads = next(group for group in groups["usergroups"] if group["handle"] == "leads")
    assert leads["users"] == ["U0BOB", "U0ERIN"]
    assert (await client.usergroups_users_list(usergroup="S0DEVS"))["users"] == [
        "U0ALICE",
        "U0DAVE",
    ]
    with pytest.raises(SlackApiError, match="no_such_subteam"):
        await client.usergroups_users_list(usergroup="S0NOPE")

    alice = (await client.users_info(user="U0ALICE"))["user"]
    assert (alice["team_id"], alice["profile"]["display_name"]) == (sim.team_id, "Alice")
    with pytest.raises(SlackApiError, match="user_not_found"):
        await client.users_info(user="U0NOPE")

    prod = (await client.conversations_info(channel="C0PROD"))["channel"]
    assert (prod["name"], prod["is_private"]) == ("prod-ops", True)
    dm = (await client.conversations_info(channel="D0ALICE"))["channel"]
    assert (dm["is_im"], dm["user"]) == (True, "U0ALICE")

    link = await client.chat_getPermalink(channel="C0OPS", message_ts="1700000000.000100")
    assert link["permalink"].endswith("/archives/C0OPS/p1700000000000100")
    assert sim.calls_to("chat.getPermalink")[0].args["message_ts"] == "1700000000.000100"


async def test_ephemeral_message(sim: SlackSimulator, client: AsyncWebClient) -> None:
    """chat.postEphemeral is kept apart from the channel's messages, for its one user."""
    answer = await client.chat_postEphemeral(channel="C0OPS", user="U0BOB", text="only you")
    [ephemeral] = sim.ephemerals
    assert (ephemeral.user, ephemeral.text, ephemeral.message_ts) == (
        "U0BOB",
        "only you",
        answer["message_ts"],
    )
    assert sim.messages("C0OPS") == []


async def test_views_open_update_publish(sim: SlackSimulator, client: AsyncWebClient) -> None:
    """A trigger opens one modal once; the modal updates by id and hash; Home publishes."""
    modal = {
        "type": "modal",
        "callback_id": "lam_request",
        "title": {"type": "plain_text", "text": "LAM"},
    }
    trigger_id = sim.new_trigger_id()
    opened = (await client.views_open(trigger_id=trigger_id, view=modal))["view"]
    assert opened["callback_id"] == "lam_request" and sim.views[opened["id"]] == opened
    with pytest.raises(SlackApiError, match="exchanged_trigger_id"):
        await client.views_open(trigger_id=trigger_id, view=modal)
    with pytest.raises(SlackApiError, match="invalid_trigger_id"):
        await client.views_open(trigger_id="1.2.forged", view=modal)

    updated = await client.views_update(
        view_id=opened["id"], hash=opened["hash"], view=modal | {"private_metadata": "C0OPS"}
    )
    assert sim.views[opened["id"]]["private_metadata"] == "C0OPS"
    with pytest.raises(SlackApiError, match="hash_conflict"):
        await client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal)
    assert updated["view"]["hash"] != opened["hash"]

    await client.views_publish(user_id="U0ALICE", view={"type": "home", "blocks": []})
    assert sim.home_views["U0ALICE"]["type"] == "home"


async def test_wait_for_call_wakes_when_the_call_arrives(
    sim: SlackSimulator, client: AsyncWebClient
) -> None:
    """wait_for_call returns a call made after the wait began, and its timeout names what came."""
    waiting = asyncio.create_task(
        sim.wait_for_call("chat.postMessage", lambda call: call.args.get("text") == "second")
    )
    await client.chat_postMessage(channel="C0OPS", text="first")
    await client.chat_postMessage(channel="C0OPS", text="second")
    assert (await waiting).args["text"] == "second"
    with pytest.raises(TimeoutError, match=r"'chat.update'.*chat.postMessage\(ok\)"):
        await sim.wait_for_call("chat.update", timeout=0.05)


async def test_bolt_acks_a_mention_and_replies_in_thread(sim: SlackSimulator, app_url: str) -> None:
    """A signed app_mention reaches the bolt app, which acks at once and replies in the thread."""
    mention = sim.app_mention("restart api in staging")
    delivery = await sim.send_event(app_url, mention)
    assert delivery.status == 200 and delivery.elapsed < 3.0
    assert delivery.payload is not None and delivery.payload["event"]["text"].startswith(
        f"<@{BOT_USER_ID}>"
    )

    reply = await sim.wait_for_call("chat.postMessage")
    assert reply.args["thread_ts"] == mention["ts"] and reply.args["text"] == "on it (retry 0)"
    assert [m.text for m in sim.messages("C0OPS", thread_ts=mention["ts"])] == ["on it (retry 0)"]
    assert len(sim.calls_to("auth.test")) == 1


async def test_delivery_returns_at_ack_while_the_listener_runs(
    sim: SlackSimulator, client: AsyncWebClient
) -> None:
    """A delivery returns when bolt's listener acks, while the listener itself runs on."""
    release = asyncio.Event()
    app = AsyncApp(client=client, signing_secret=SIGNING_SECRET)

    @app.command("/lam")
    async def slow(ack: AsyncAck, respond: AsyncRespond) -> None:
        await ack()
        await release.wait()
        await respond(text="finished")

    async with serve(app.web_app(path="/slack/events")) as base_url:
        delivery = await sim.send_command(f"{base_url}/slack/events", "/lam", "long job")
        assert (delivery.status, delivery.body) == (200, "")
        assert sim.response_posts == []
        release.set()
        assert (await sim.wait_for_response_post()).body["text"] == "finished"


async def test_bolt_sees_slack_retry_headers(sim: SlackSimulator, app_url: str) -> None:
    """A redelivery carries the first event_id and X-Slack-Retry-Num, as Slack's retries do."""
    mention = sim.app_mention("status")
    first = await sim.send_event(app_url, mention)
    assert first.payload is not None
    again = await sim.send_event(app_url, mention, event_id=first.payload["event_id"], retry_num=1)
    assert again.payload is not None and again.payload["event_id"] == first.payload["event_id"]
    replies = await sim.wait_for_calls("chat.postMessage", 2)
    assert sorted(call.args["text"] for call in replies) == ["on it (retry 0)", "on it (retry 1)"]


async def test_bolt_answers_a_direct_message(sim: SlackSimulator, app_url: str) -> None:
    """A message event from a DM (channel_type im) reaches bolt's message listener."""
    dm = sim.direct_message("hello", user="U0BOB")
    assert (dm["channel"], dm["channel_type"]) == ("D0BOB", "im")
    assert (await sim.send_event(app_url, dm)).status == 200
    answer = await sim.wait_for_call("chat.postMessage")
    assert (answer.args["channel"], answer.args["text"]) == ("D0BOB", "you said 'hello'")


async def test_bolt_command_acks_and_responds(sim: SlackSimulator, app_url: str) -> None:
    """A /lam command is acked with text and answered later through its response_url."""
    delivery = await sim.send_command(app_url, "/lam", "restart api", user="U0BOB")
    assert (delivery.status, delivery.body) == (200, "working")
    post = await sim.wait_for_response_post()
    assert post.body["text"] == "done: restart api" and post.channel == "C0OPS"
    assert delivery.payload is not None and delivery.payload["trigger_id"]


async def test_bolt_block_action_replaces_the_message(
    sim: SlackSimulator, client: AsyncWebClient, app_url: str
) -> None:
    """A button click is acked and the app's replace_original response edits the message."""
    posted = await client.chat_postMessage(channel="C0OPS", text="approve restart?")
    delivery = await sim.send_block_action(
        app_url, "approve", "req-1", user="U0ERIN", message_ts=posted["ts"]
    )
    assert delivery.status == 200
    post = await sim.wait_for_response_post()
    assert post.message_ts == posted["ts"]
    assert sim.message("C0OPS", posted["ts"]).text == "approved req-1 by U0ERIN"


async def test_bolt_view_submission(
    sim: SlackSimulator, client: AsyncWebClient, app_url: str
) -> None:
    """A modal submission carries its state values and private_metadata to the bolt app."""
    opened = await client.views_open(
        trigger_id=sim.new_trigger_id(),
        view={"type": "modal", "callback_id": "lam_request", "blocks": []},
    )
    delivery = await sim.send_view_submission(
        app_url,
        "lam_request",
        {"reason": {"reason_input": "disk full"}},
        private_metadata="C0OPS",
        view_id=opened["view"]["id"],
    )
    assert (delivery.status, delivery.body) == (200, "")
    posted = await sim.wait_for_call("chat.postMessage")
    assert posted.args["text"] == "request: disk full"


async def test_bolt_rejects_bad_signatures(sim: SlackSimulator, app_url: str) -> None:
    """Bolt answers 401 to a forged signature, a stale timestamp, an altered body, no signature."""
    body = json.dumps(sim.event_callback(sim.app_mention("drop database")))
    forged = SlackSigner("not-the-secret").headers(body)
    stale = await sim.send_raw(app_url, body, content_type="application/json", timestamp=0)
    altered = sim.signer.headers(body.replace("drop", "keep"))
    deliveries = [
        await sim.send_raw(app_url, body, content_type="application/json", headers=forged),
        stale,
        await sim.send_raw(app_url, body, content_type="application/json", headers=altered),
        await sim.send_raw(app_url, body, content_type="application/json", sign=False),
    ]
    assert [d.status for d in deliveries] == [401] * 4
    assert deliveries[0].json() == {"error": "invalid request"}
    assert sim.calls_to("chat.postMessage") == []


async def test_bolt_refuses_malformed_requests(sim: SlackSimulator, app_url: str) -> None:
    """A non-numeric timestamp or an unparsable body never reaches a listener."""
    body = json.dumps(sim.event_callback(sim.app_mention("hi")))
    odd_stamp = await sim.send_raw(app_url, body, content_type="application/json", timestamp="soon")
    broken = await sim.send_raw(app_url, "{not json", content_type="application/json")
    assert odd_stamp.status >= 400 and broken.status >= 400
    assert sim.calls_to("chat.postMessage") == []


async def test_apps_connections_open_wants_the_app_token(sim: SlackSimulator) -> None:
    """apps.connections.open answers a ws URL for the app-level token only."""
    opened = await AsyncWebClient(base_url=sim.api_url).apps_connections_open(
        app_token=sim.app_token
    )
    assert opened["url"].startswith(sim.base_url.replace("http", "ws") + "/socket?ticket=")
    for token, error in [
        (sim.bot_token, "not_allowed_token_type"),
        ("xapp-1-wrong", "invalid_auth"),
    ]:
        with pytest.raises(SlackApiError, match=error):
            await AsyncWebClient(base_url=sim.api_url).apps_connections_open(app_token=token)


async def test_socket_mode_client_acks_and_reconnects(sim: SlackSimulator) -> None:
    """slack_sdk's SocketModeClient connects, acks, and reconnects when told to or cut off."""
    received: asyncio.Queue[SocketModeRequest] = asyncio.Queue()

    async def acknowledge(client: Any, request: SocketModeRequest) -> None:
        await received.put(request)
        response = SocketModeResponse(
            envelope_id=request.envelope_id, payload={"seen": request.type}
        )
        await client.send_socket_mode_response(response)

    socket_client = SocketModeClient(
        app_token=sim.app_token, web_client=AsyncWebClient(base_url=sim.api_url)
    )
    socket_client.socket_mode_request_listeners.append(acknowledge)
    async with connected(socket_client):
        first = await sim.wait_for_socket(1)
        mention = sim.event_callback(sim.app_mention("hi"))
        ack = await sim.socket_send("events_api", mention)
        assert (ack.connection, ack.payload) == (1, {"seen": "events_api"})
        assert (await received.get()).payload["event_id"] == mention["event_id"]

        await sim.socket_disconnect("refresh_requested")
        second = await sim.wait_for_socket(2)
        ack = await sim.socket_send("slash_commands", sim.command_payload("/lam", "status"))
        assert ack.connection == 2 and second.open
        assert len(sim.calls_to("apps.connections.open")) == 2
        assert ack in sim.acks and first.ticket != second.ticket

        closed = await sim.socket_disconnect("warning", close=True)
        assert closed is second and not second.open
        third = await sim.wait_for_socket(3)
        assert (await sim.socket_send("events_api", mention)).connection == third.number == 3


async def test_socket_send_times_out_without_an_ack(sim: SlackSimulator) -> None:
    """socket_send fails, naming the envelope, when the client never acks."""
    socket_client = SocketModeClient(
        app_token=sim.app_token, web_client=AsyncWebClient(base_url=sim.api_url)
    )
    async with connected(socket_client):
        with pytest.raises(TimeoutError, match="no ack for 'events_api' envelope"):
            await sim.socket_send(
                "events_api", sim.event_callback(sim.app_mention("hi")), timeout=0.2
            )


async def test_bolt_socket_mode_handler(sim: SlackSimulator, client: AsyncWebClient) -> None:
    """Bolt's AsyncSocketModeHandler acks envelopes, with the ack() text for a command."""
    handler = AsyncSocketModeHandler(lam_app(client), sim.app_token)
    async with connected(handler.client):
        mention = sim.app_mention("deploy")
        ack = await sim.socket_send("events_api", sim.event_callback(mention))
        assert ack.payload is None
        reply = await sim.wait_for_call("chat.postMessage")
        assert reply.args["thread_ts"] == mention["ts"]

        ack = await sim.socket_send("slash_commands", sim.command_payload("/lam", "status"))
        assert ack.payload == {"text": "working"}
        assert (await sim.wait_for_response_post()).body["text"] == "done: status"

        click = sim.block_actions_payload(
            "approve", "req-2", user="U0BOB", message_ts=reply.response["ts"]
        )
        assert (await sim.socket_send("interactive", click)).payload is None
        post = await sim.wait_for_response_post(lambda p: p.message_ts == reply.response["ts"])
        assert post.body["replace_original"] is True
        assert sim.message("C0OPS", reply.response["ts"]).text == "approved req-2 by U0BOB"
