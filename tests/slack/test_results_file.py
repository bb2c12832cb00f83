"""Results go in the thread; output too long for a message goes up as a file."""

from __future__ import annotations

from tests.slack.conftest import Lam, texts


async def test_long_output_is_uploaded_to_the_thread(lam: Lam) -> None:
    """A step printing 10,000 bytes gets a results message naming it and a file in the thread."""
    sim = lam.sim
    mention = sim.app_mention("run test.output size=10000 in staging; run test.echo text=hi")
    assert await lam.event(mention) == 200
    results = await sim.wait_for_call(
        "chat.postMessage",
        lambda c: c.args.get("thread_ts") == mention["ts"] and "finished successfully" in texts(c),
    )
    shown = texts(results)
    assert "characters, attached" in shown and "```hi```" in shown
    await sim.wait_for_call("files.completeUploadExternal")
    await lam.idle()
    [upload] = sim.uploads.values()
    assert upload.completed and upload.channels == ["C0OPS"] and upload.thread_ts == mention["ts"]
    assert upload.content == ("é" * 5000).encode() and upload.filename.endswith("-s1.txt")


async def test_failure_is_reported_in_the_thread(lam: Lam) -> None:
    """A failing step is shown failed on the plan, and the results say why."""
    sim = lam.sim
    mention = sim.app_mention("break in staging")
    assert await lam.event(mention) == 200
    results = await sim.wait_for_call(
        "chat.postMessage",
        lambda c: (
            c.args.get("thread_ts") == mention["ts"]
            and "failed" in texts(c)
            and "Planning" not in texts(c)
        ),
    )
    assert "503 maintenance" in texts(results)
    plan = await sim.wait_for_call("chat.update", lambda c: ": failed" in texts(c))
    assert "failed in" in texts(plan) and "error: the service refused" in texts(plan)
