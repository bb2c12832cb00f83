"""The local Slack's Web API: the methods LAM calls, uploads, and ``response_url`` posts."""

from __future__ import annotations

import secrets
import time
import uuid

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.support.slack_model import (
    APP_TOKEN_METHODS,
    BOT_ID,
    BOT_SCOPES,
    JSON,
    MAX_BLOCKS,
    MAX_TEXT,
    TEAM_DOMAIN,
    TRIGGER_LIFETIME,
    ApiCall,
    EphemeralMessage,
    Message,
    ResponsePost,
    SlackApiError,
    SlackChannel,
    UploadedFile,
    bearer_token,
    flag,
    json_arg,
    new_id,
    parse_args,
)


class WebApi:
    """The Web API half of ``SlackSimulator``; it keeps its state on the simulator."""

    # -- the Web API -------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        headers: CIMultiDict[str] = CIMultiDict()
        try:
            args = await parse_args(request)
        except ValueError:
            args = {}
            token = bearer_token(request, args)
            status, body = 200, {"ok": False, "error": "invalid_json"}
        else:
            token = bearer_token(request, args)
            status, body = self._answer(method, token, args, headers)
        received = CIMultiDictProxy(CIMultiDict(request.headers))
        self.calls.append(ApiCall(method, args, received, token, status, body))
        await self._notify()
        return web.json_response(body, status=status, headers=headers)

    def _answer(
        self, method: str, token: str | None, args: JSON, headers: CIMultiDict[str]
    ) -> tuple[int, JSON]:
        handler = self._methods.get(method)
        if handler is None:
            return 404, {"ok": False, "error": "unknown_method", "req_method": method}
        wanted = self.app_token if method in APP_TOKEN_METHODS else self.bot_token
        if token is None:
            return 200, {"ok": False, "error": "not_authed"}
        if token in {self.app_token, self.bot_token} and token != wanted:
            return 200, {"ok": False, "error": "not_allowed_token_type"}
        if token != wanted:
            return 200, {"ok": False, "error": "invalid_auth"}
        if self._faults[method]:
            fault = self._faults[method].popleft()
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            return fault.status, {"ok": False, "error": fault.error}
        if method == "auth.test":
            headers["X-OAuth-Scopes"] = BOT_SCOPES
        try:
            return 200, handler(args)
        except SlackApiError as refusal:
            return refusal.status, {"ok": False, "error": refusal.error}

    def _auth_test(self, args: JSON) -> JSON:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": "LAM Test",
            "user": self.users[self.bot_user_id].name if self.bot_user_id in self.users else "lam",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: JSON) -> JSON:
        channel = self._writable_channel(args.get("channel"))
        message = Message(channel=channel, ts=self._next_ts(), user=self.bot_user_id)
        thread_ts = args.get("thread_ts")
        message.thread_ts = str(thread_ts) if thread_ts else None
        self._fill(message, args, require_content=True)
        self._messages[channel][message.ts] = message
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.as_json()}

    def _chat_update(self, args: JSON) -> JSON:
        channel = self._channel(args.get("channel")).id
        message = self._messages[channel].get(str(args.get("ts")))
        if message is None or message.deleted:
            raise SlackApiError("message_not_found")
        if message.user != self.bot_user_id:
            raise SlackApiError("cant_update_message")
        self._fill(message, args, require_content=False)
        message.updates += 1
        answer = {"ok": True, "channel": channel, "ts": message.ts, "text": message.text}
        return answer | {"message": message.as_json()}

    def _chat_post_ephemeral(self, args: JSON) -> JSON:
        channel = self._writable_channel(args.get("channel"))
        user = str(args.get("user") or "")
        if user not in self.users:
            raise SlackApiError("user_not_found")
        blocks = json_arg(args, "blocks", [])
        if not args.get("text") and not blocks and not args.get("attachments"):
            raise SlackApiError("no_text")
        ephemeral = EphemeralMessage(
            channel,
            user,
            self._next_ts(),
            str(args.get("text") or ""),
            blocks,
            str(args["thread_ts"]) if args.get("thread_ts") else None,
        )
        self.ephemerals.append(ephemeral)
        return {"ok": True, "message_ts": ephemeral.message_ts}

    def _chat_get_permalink(self, args: JSON) -> JSON:
        channel = self._channel(args.get("channel")).id
        ts = str(args.get("message_ts") or "")
        if not ts:
            raise SlackApiError("message_not_found")
        link = f"https://{TEAM_DOMAIN}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": link}

    def _views_open(self, args: JSON) -> JSON:
        trigger_id = str(args.get("trigger_id") or "")
        if trigger_id not in self._triggers:
            raise SlackApiError("invalid_trigger_id")
        issued = self._triggers[trigger_id]
        if issued is None:
            raise SlackApiError("exchanged_trigger_id")
        if time.monotonic() - issued > TRIGGER_LIFETIME:
            raise SlackApiError("expired_trigger_id")
        self._triggers[trigger_id] = None
        view = self._view(json_arg(args, "view", None), view_id=new_id("V"))
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _views_update(self, args: JSON) -> JSON:
        view_id = args.get("view_id")
        if not view_id and args.get("external_id"):
            matches = [v for v in self.views.values() if v["external_id"] == args["external_id"]]
            view_id = matches[0]["id"] if matches else None
        current = self.views.get(str(view_id))
        if current is None:
            raise SlackApiError("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise SlackApiError("hash_conflict")
        view = self._view(json_arg(args, "view", None), view_id=current["id"])
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _views_publish(self, args: JSON) -> JSON:
        user = str(args.get("user_id") or "")
        if user not in self.users:
            raise SlackApiError("user_not_found")
        view = self._view(json_arg(args, "view", None), view_id=new_id("V"))
        if view["type"] != "home":
            raise SlackApiError("invalid_arguments")
        self.home_views[user] = view
        return {"ok": True, "view": view}

    def _usergroups_list(self, args: JSON) -> JSON:
        with_users = flag(args.get("include_users"))
        groups = []
        for group in self.usergroups.values():
            described: JSON = {
                "id": group.id,
                "team_id": group.team_id,
                "is_usergroup": True,
                "name": group.name,
                "description": "",
                "handle": group.handle,
                "is_external": False,
                "date_delete": 0,
                "user_count": len(group.users),
            }
            if with_users:
                described["users"] = list(group.users)
            groups.append(described)
        return {"ok": True, "usergroups": groups}

    def _usergroups_users_list(self, args: JSON) -> JSON:
        group = self.usergroups.get(str(args.get("usergroup") or ""))
        if group is None:
            raise SlackApiError("no_such_subteam")
        return {"ok": True, "users": list(group.users)}

    def _users_info(self, args: JSON) -> JSON:
        user = self.users.get(str(args.get("user") or ""))
        if user is None:
            raise SlackApiError("user_not_found")
        profile = {
            "display_name": user.display_name,
            "display_name_normalized": user.display_name,
            "real_name": user.real_name,
            "real_name_normalized": user.real_name,
            "team": user.team_id,
        }
        described = {
            "id": user.id,
            "team_id": user.team_id,
            "name": user.name,
            "deleted": user.deleted,
            "real_name": user.real_name,
            "is_bot": user.is_bot,
            "is_app_user": False,
            "profile": profile,
        }
        return {"ok": True, "user": described}

    def _conversations_info(self, args: JSON) -> JSON:
        channel = self._channel(args.get("channel"))
        described: JSON = {
            "id": channel.id,
            "created": 1_700_000_000,
            "is_archived": channel.is_archived,
            "is_im": channel.is_im,
            "context_team_id": self.team_id,
        }
        if channel.is_im:
            described |= {"user": channel.user, "is_user_deleted": False}
        else:
            described |= {
                "name": channel.name,
                "is_channel": not channel.is_private,
                "is_group": channel.is_private,
                "is_private": channel.is_private,
                "is_member": True,
            }
        return {"ok": True, "channel": described}

    def _files_get_upload_url(self, args: JSON) -> JSON:
        filename = str(args.get("filename") or "")
        try:
            length = int(args.get("length") or "")
        except ValueError:
            raise SlackApiError("invalid_arguments") from None
        if not filename:
            raise SlackApiError("invalid_arguments")
        upload = UploadedFile(new_id("F"), filename, length)
        self.uploads[upload.id] = upload
        url = f"{self.base_url}/upload/v1/{upload.id}"
        return {"ok": True, "upload_url": url, "file_id": upload.id}

    def _files_complete_upload(self, args: JSON) -> JSON:
        items = json_arg(args, "files", None)
        if not isinstance(items, list) or not items:
            raise SlackApiError("invalid_arguments")
        channels = [str(c) for c in str(args.get("channels") or "").split(",") if c]
        if args.get("channel_id"):
            channels.append(str(args["channel_id"]))
        channels = [self._writable_channel(channel) for channel in channels]
        uploads = []
        for item in items:
            upload = self.uploads.get(str(item.get("id")) if isinstance(item, dict) else "")
            if upload is None or upload.content is None:
                raise SlackApiError("file_not_found")
            uploads.append((upload, item))
        thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
        comment = str(args["initial_comment"]) if args.get("initial_comment") else None
        described = []
        for upload, item in uploads:
            upload.title = str(item.get("title") or upload.filename)
            upload.channels, upload.thread_ts, upload.initial_comment = channels, thread_ts, comment
            upload.completed = True
            described.append(self._file_json(upload))
        for channel in channels:
            message = Message(channel, self._next_ts(), self.bot_user_id, text=comment or "")
            message.thread_ts, message.files = thread_ts, described
            self._messages[channel][message.ts] = message
        return {"ok": True, "files": described}

    def _apps_connections_open(self, args: JSON) -> JSON:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        url = self.base_url.replace("http://", "ws://", 1)
        return {"ok": True, "url": f"{url}/socket?ticket={ticket}&app_id={self.app_id}"}

    def _file_json(self, upload: UploadedFile) -> JSON:
        return {
            "id": upload.id,
            "created": int(time.time()),
            "name": upload.filename,
            "title": upload.title,
            "user": self.bot_user_id,
            "size": len(upload.content or b""),
            "url_private": f"{self.base_url}/files/{upload.id}/{upload.filename}",
            "permalink": f"https://{TEAM_DOMAIN}.slack.com/files/{self.bot_user_id}/{upload.id}",
            "channels": upload.channels,
        }

    def _channel(self, reference: object) -> SlackChannel:
        """A channel by id, ``#name`` or name; a user id means the DM with that user."""
        key = str(reference or "")
        if key in self.channels:
            return self.channels[key]
        for channel in self.channels.values():
            if channel.name and key.lstrip("#") == channel.name:
                return channel
        if key in self.users:
            return self.dm_channel(key)
        raise SlackApiError("channel_not_found")

    def _writable_channel(self, reference: object) -> str:
        channel = self._channel(reference)
        if channel.is_archived:
            raise SlackApiError("is_archived")
        return channel.id

    def _fill(self, message: Message, args: JSON, *, require_content: bool) -> None:
        blocks = json_arg(args, "blocks", None)
        attachments = json_arg(args, "attachments", None)
        text = args.get("text")
        if require_content and not text and not blocks and not attachments:
            raise SlackApiError("no_text")
        if text is not None and len(str(text)) > MAX_TEXT:
            raise SlackApiError("msg_too_long")
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS):
            raise SlackApiError("invalid_blocks")
        if text is not None:
            message.text = str(text)
        if blocks is not None:
            message.blocks = blocks
        if attachments is not None:
            message.attachments = attachments
        if "metadata" in args:
            message.metadata = json_arg(args, "metadata", None)

    def _view(self, view: object, *, view_id: str) -> JSON:
        if not isinstance(view, dict) or view.get("type") not in {"modal", "home"}:
            raise SlackApiError("invalid_arguments")
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": view["type"],
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": view.get("title"),
            "submit": view.get("submit"),
            "close": view.get("close"),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "external_id": view.get("external_id", ""),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.app_id,
            "app_installed_team_id": self.team_id,
            "bot_id": BOT_ID,
        }

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def dm_channel(self, user: str) -> SlackChannel:
        """The DM channel between the bot and ``user``, created on first use."""
        for channel in self.channels.values():
            if channel.is_im and channel.user == user:
                return channel
        channel = SlackChannel("D" + user.removeprefix("U"), is_im=True, user=user)
        self.channels[channel.id] = channel
        return channel

    # -- uploads and response_urls -----------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="file not found")
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            part = form.get("file")
            content = part.file.read() if isinstance(part, web.FileField) else str(part).encode()
        else:
            content = await request.read()
        upload.content = content
        await self._notify()
        return web.Response(text=f"OK - {len(content)}")

    async def _response_url(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        if response_id not in self._response_urls:
            return web.Response(status=404, text="no_service")
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(body, dict):
            return web.Response(status=400, text="invalid_payload")
        channel, message_ts = self._response_urls[response_id]
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        self.response_posts.append(ResponsePost(response_id, body, headers, channel, message_ts))
        original = self._messages.get(channel or "", {}).get(message_ts or "")
        if original is not None and flag(body.get("delete_original")):
            original.deleted = True
        elif original is not None and flag(body.get("replace_original")):
            self._fill(original, body, require_content=False)
            original.updates += 1
        await self._notify()
        return web.Response(text="ok")
