"""Planner evaluation: the corpus, its scoring, and a scripted model scored like any planner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.eval import load_corpus, run_eval
from bot.planning.aliases import AliasPlanner
from bot.planning.chain import ChainPlanner
from bot.planning.llm import LLMPlanner
from connectors import Catalog
from connectors.shell import ShellConnector, ShellSettings
from tests.support.openai_server import ScriptedOpenAI, http_error, planner_on, text, tool_calls

CORPUS = Path(__file__).resolve().parent.parent / "evals" / "corpus.yaml"


@pytest.fixture
async def llm(openai_server: ScriptedOpenAI) -> AsyncIterator[LLMPlanner]:
    """The model planner on the scripted server, reporting a failed call without retrying."""
    planner = planner_on(openai_server, max_retries=0)
    yield planner
    await planner.aclose()


@pytest.fixture
def catalog() -> Catalog:
    return Catalog([ShellConnector("shell", ShellSettings())])


def corpus_of(tmp_path: Path, *case_ids: str) -> Path:
    """A corpus file holding only these cases of the shipped corpus, in this order."""
    cases = {case.id: case for case in load_corpus(CORPUS).cases}
    lines = ["cases:"]
    for case_id in case_ids:
        lines.append("  - " + cases[case_id].model_dump_json(exclude_none=True))
    path = tmp_path / "corpus.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_the_offline_planner_gets_every_offline_case_and_no_model_case(
    catalog: Catalog,
) -> None:
    """Over the shipped corpus, the phrasing planner passes the offline cases and only those."""
    report = await run_eval(CORPUS, AliasPlanner(), catalog)
    assert report.overall.total >= 50
    offline, model = report.by_tag["offline"], report.by_tag["model"]
    assert (offline.passed, offline.total) == (offline.total, 48)
    assert (model.passed, model.total) == (0, 12)
    assert report.by_expectation["refuse"].accuracy == 1.0
    assert report.by_expectation["clarify"].accuracy == 0.0
    assert report.overall.accuracy == pytest.approx(48 / 60)
    assert report.tokens == 0
    assert report.model_dump(mode="json")["overall"]["accuracy"] == pytest.approx(0.8)


async def test_the_corpus_covers_every_builtin_shell_action(catalog: Catalog) -> None:
    """Each built-in shell action is expected in a plan, and refusals and clarifications exist."""
    corpus = load_corpus(CORPUS)
    planned = {
        step.action
        for case in corpus.cases
        if not isinstance(case.expect, str)
        for step in case.expect
    }
    assert planned == {action.id for action in catalog}
    kinds = {case.expect for case in corpus.cases if isinstance(case.expect, str)}
    assert kinds == {"refuse", "clarify"}


async def test_the_report_explains_each_failure(catalog: Catalog, tmp_path: Path) -> None:
    """A failed case names what was expected and what the planner did; render lists it."""
    path = corpus_of(tmp_path, "tail-lines", "clarify-which-log", "refuse-shadow")
    report = await run_eval(path, AliasPlanner(), catalog)
    passed, clarify, refused = report.cases
    assert passed.passed and passed.planned == "shell.tail_log(lines=20, path='/var/log/syslog')"
    assert (clarify.passed, clarify.got, clarify.problem) == (
        False,
        "refuse",
        "expected clarify, got refuse",
    )
    assert refused.passed and "not under" in refused.planned
    rendered = report.render()
    assert rendered.splitlines()[0].startswith("FAIL clarify-which-log: 'tail the log'")
    assert "aliases: 2/3 passed (67%)" in rendered


async def test_a_scripted_model_behind_the_chain_is_scored(
    openai_server: ScriptedOpenAI, llm: LLMPlanner, catalog: Catalog, tmp_path: Path
) -> None:
    """Phrasings skip the model; paraphrases, questions and refusals come from it and are scored."""
    path = corpus_of(
        tmp_path,
        "uptime",
        "paraphrase-give-me-lines",
        "clarify-which-log",
        "refuse-drop-database",
        "paraphrase-loaded-box",
    )
    openai_server.enqueue(
        tool_calls(("shell__tail_log", {"path": "/var/log/syslog", "lines": 100})),
        tool_calls(("clarify", {"question": "Which log file?"})),
        text("No offered tool can drop a database."),
        tool_calls(("shell__processes", {})),
    )
    report = await run_eval(path, ChainPlanner(AliasPlanner(), llm), catalog)
    assert [(case.id, case.passed) for case in report.cases] == [
        ("uptime", True),
        ("paraphrase-give-me-lines", True),
        ("clarify-which-log", True),
        ("refuse-drop-database", True),
        ("paraphrase-loaded-box", False),
    ]
    assert report.cases[-1].problem == "actions ['shell.processes'] instead of ['shell.uptime']"
    assert report.planner == "aliases+llm"
    assert [case.tokens for case in report.cases] == [0, 150, 150, 150, 150]
    assert report.tokens == 600


async def test_an_unreachable_model_fails_even_the_refusals(
    openai_server: ScriptedOpenAI, llm: LLMPlanner, catalog: Catalog, tmp_path: Path
) -> None:
    """A model error is scored as an error, never as a correct refusal."""
    openai_server.enqueue(http_error(401, "bad key"))
    report = await run_eval(corpus_of(tmp_path, "refuse-drop-database"), llm, catalog)
    (case,) = report.cases
    assert (case.passed, case.got) == (False, "error")
    assert "check OPENAI_API_KEY" in case.planned


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("cases: [", "is not valid YAML"),
        ("cases:\n  - {id: a, request: x, expect: maybe}", "is invalid: cases.0.expect"),
        (
            "cases:\n  - {id: a, request: x, expect: refuse}\n"
            "  - {id: a, request: y, expect: refuse}",
            "uses case id 'a' twice",
        ),
    ],
)
async def test_a_broken_corpus_is_a_config_error_naming_the_file(
    catalog: Catalog, tmp_path: Path, content: str, problem: str
) -> None:
    """A corpus that cannot be read stops the run with the file and the problem."""
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem) as raised:
        await run_eval(path, AliasPlanner(), catalog)
    assert "bad.yaml" in str(raised.value)
