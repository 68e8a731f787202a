"""What an application written against vLLM with the official `openai` SDK sees from this server: the chat
fields a conversation carries reach the chat template as vLLM gives them (tool calls of earlier turns,
names, reasoning, `reasoning_effort`), every refusal parses into the SDK's exception with its
`message`, `param` and `code`, and an API vLLM serves and this server does not is a 404 that says so.
One timing-only server of a checkpoint copy whose chat template prints what it is given."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from api.server import Server
from tests.serving.utils import templated_tiny_llama_cfg

SHOWING = ("{{ bos_token }}{% if tools %}<tools{% for t in tools %} {{ t.function.name }}{% endfor %}>\n{% endif %}"
           "{% for d in documents or [] %}<doc {{ d.title }}: {{ d.text }}>\n{% endfor %}"
           "{% for m in messages %}<|{{ m.role }}{% if m.name is defined %} {{ m.name }}{% endif %}|>"
           "{% if m.tools is defined %}<own tools {{ m.tools | tojson }}>{% endif %}"
           "{% if m.reasoning_content is defined %}<think>{{ m.reasoning_content }}</think>{% endif %}"
           "{{ m.content }}{% if m.tool_calls is defined %}{% for c in m.tool_calls %}"
           "<call {{ c.function.name }}({% if c.function.arguments is mapping %}{{ c.function.arguments.city }}"
           "{% else %}{{ c.function.arguments }}{% endif %})>{% endfor %}{% endif %}"
           "{% if m.tool_call_id is defined %}<for {{ m.tool_call_id }}>{% endif %}\n{% endfor %}"
           "{% if add_generation_prompt %}<|assistant|>{% if reasoning_effort is defined %}<effort "
           "{{ reasoning_effort }}>{% endif %}{% if enable_thinking is defined and not enable_thinking %}"
           "<think></think>{% endif %}{% endif %}")
"""A chat template that writes the tools, the documents, every message field and variable vLLM gives a template
(Llama 3.1's and Qwen 3's templates read these), so a prompt's text shows what reached it."""

TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?", "name": "bob"},
    {"role": "assistant", "content": None, "reasoning_content": "ask the tool",
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
"""An agent's conversation: a call an earlier turn made, and its answer."""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = templated_tiny_llama_cfg(tmp_path_factory.mktemp("sdk") / "m", SHOWING)
    with Server(cfg, "local") as s:
        s.model = cfg.model.name
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def prompt_text(server, client, extra_body: dict | None = None, **request) -> str:
    """The chat prompt the server rendered for `request`, as text (its ids back through /detokenize)."""
    r = client.chat.completions.create(model=server.model, max_tokens=1,
                                       extra_body=dict(extra_body or {}, return_token_ids=True), **request)
    ids = r.model_extra["prompt_token_ids"]
    return httpx.post(server.url + "/detokenize", json={"tokens": ids}, timeout=60).json()["prompt"]


def test_a_conversation_s_tool_calls_names_and_reasoning_reach_the_template_as_vllm_gives_them(server, client):
    """vLLM gives a template an assistant's `tool_calls` (arguments parsed from their JSON string) and
    `reasoning` (also as `reasoning_content`), a tool message's `tool_call_id` and any `name`; they were
    dropped, so the prompt (and its prefill time) lacked the calls an agent's history holds."""
    text = prompt_text(server, client, messages=TOOL_TURNS)
    assert "<|user bob|>Weather in Paris?" in text
    assert "<|assistant|><think>ask the tool</think><call get_weather(Paris)>" in text
    assert "<|tool|>sunny<for call_1>" in text


def test_only_an_assistant_s_reasoning_and_tool_calls_reach_the_template_as_vllm_gives_them(server, client):
    """vLLM's `_parse_chat_message_content` gives a template `tool_calls` and `reasoning` of an assistant's message
    only (and `tool_call_id` of a tool's): a user's that carries them renders without them."""
    user = dict(TOOL_TURNS[1], role="user", content="hi")
    assert prompt_text(server, client, messages=[user]) == "<s><|user|>hi<|assistant|>"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_tools_with_tool_choice_none_reach_the_template_and_no_call_is_made(server, client):
    """vLLM gives the template the request's tools whatever tool_choice says (its
    --exclude-tools-when-tool-choice-none is off by default); with "none" no call is asked for, so this server,
    which makes none, serves it: they were refused. Tools without tool_choice ("auto") stay refused."""
    text = prompt_text(server, client, messages=TOOL_TURNS, tools=[WEATHER], tool_choice="none")
    assert text.startswith("<s><tools get_weather>\n") and "<call get_weather(Paris)>" in text
    for choice in ({}, {"tool_choice": "auto"}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=server.model, messages=HI, max_tokens=1, tools=[WEATHER], **choice)
        assert err.value.param == "tools" and 'tool_choice "none"' in err.value.message
        assert "(or [])" not in err.value.message  # vLLM refuses an empty tools: no fix to suggest
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.model, messages=HI, max_tokens=1, tool_choice="none",
                                       tools=[{"type": "function", "function": {"description": "no name"}}])
    assert err.value.param == "tools.0"
    with pytest.raises(openai.BadRequestError) as err:  # vLLM's ChatCompletionToolsParam: type "function" only
        client.chat.completions.create(model=server.model, messages=HI, max_tokens=1, tool_choice="none",
                                       tools=[dict(WEATHER, type="custom")])
    assert err.value.param == "tools.0"
    lone = dict(WEATHER, function=dict(WEATHER["function"], description="\ud800"))  # a lone surrogate: not text
    body = {"model": server.model, "messages": HI, "max_tokens": 1, "tool_choice": "none", "tools": [lone]}
    r = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(body), timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


def test_tools_reach_the_template_in_vllm_s_shape():
    """vLLM gives a template each tool as its `ChatCompletionToolsParam.model_dump()`
    (vllm/entrypoints/generate/base/protocol.py `FunctionDefinition`): `type`, then `function` with `name`,
    `description` and `parameters` (null when left out), `strict` and `defer_loading` only when set, other keys
    dropped, so a template that writes a tool as JSON (Llama 3.1's `tojson`) renders vLLM's text; the tool was
    given as sent. A field of the wrong type is vLLM's 400 naming the tool."""
    from api.chat import tool_definitions
    from api.checks import ApiError

    sent = {"function": {"parameters": {"type": "object"}, "name": "f", "x": 1, "defer_loading": None},
            "defer_loading": True, "y": 2}
    assert json.dumps(tool_definitions([sent])) == json.dumps([{"type": "function", "function": {
        "name": "f", "description": None, "parameters": {"type": "object"}, "defer_loading": True},
        "defer_loading": True}])  # the tool's defer_loading is its function's too, as vLLM propagates it
    for bad in ({"description": 1}, {"parameters": "{}"}, {"strict": "yes"}):
        with pytest.raises(ApiError) as err:
            tool_definitions([WEATHER, {"type": "function", "function": dict({"name": "f"}, **bad)}])
        assert err.value.param == "tools.1"


def test_tools_with_a_null_tool_choice_reach_the_template_and_no_tools_is_a_400_as_vllm_s(server, client):
    """vLLM's `check_tool_usage` makes tools without tool_choice "auto", but leaves an explicit null as it is, which
    asks for no call and gives the template the tools as "none" does (vllm/renderers/online_renderer.py
    `render_chat`); they were refused here. An empty `tools` is vLLM's 400 naming tools; it was accepted."""
    text = prompt_text(server, client, messages=HI, tools=[WEATHER], extra_body={"tool_choice": None})
    assert text.startswith("<s><tools get_weather>\n")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.model, messages=HI, max_tokens=1, tools=[], tool_choice="none")
    assert err.value.param == "tools" and "empty" in err.value.message


def test_documents_reach_the_template_as_vllm_gives_them(server, client):
    """vLLM's `documents` (retrieval-augmented generation: Command-R's and Granite's templates read them) are
    the template's `documents`; they were ignored, the prompt rendered without them."""
    text = prompt_text(server, client, messages=HI, extra_body={"documents": [{"title": "Paris", "text": "sunny"}]})
    assert text.startswith("<s><doc Paris: sunny>\n<|user|>hi")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.model, messages=HI, max_tokens=1, extra_body={"documents": ["x"]})
    assert err.value.param == "documents.0"


def test_chat_template_kwargs_tools_and_documents_merge_with_the_request_s_as_vllm_merges_them(server, client):
    """vLLM merges `chat_template_kwargs` with the request (vllm/renderers/params.py `merge_kwargs`): the kwargs'
    `tools` replace the request's (vllm/renderers/online_renderer.py `preprocess_chat`), the request's
    `documents` replace the kwargs' (`build_chat_params`), a null or "auto" kwarg is dropped; they were a 400."""
    other = {"type": "function", "function": {"name": "other"}}

    def shown(**extra) -> str:
        return prompt_text(server, client, messages=HI, extra_body=extra)

    assert shown(chat_template_kwargs={"tools": [other]}).startswith("<s><tools other>\n<|user|>hi")
    assert prompt_text(server, client, messages=HI, tools=[WEATHER], tool_choice="none",
                       extra_body={"chat_template_kwargs": {"tools": [other]}}).startswith("<s><tools other>\n")
    assert prompt_text(server, client, messages=HI, tools=[WEATHER], tool_choice="none",  # null: the request's
                       extra_body={"chat_template_kwargs": {"tools": None}}).startswith("<s><tools get_weather>\n")
    kwargs_doc = {"chat_template_kwargs": {"documents": [{"title": "Oslo", "text": "rain"}]}}
    assert shown(**kwargs_doc).startswith("<s><doc Oslo: rain>\n<|user|>hi")
    assert shown(documents=[{"title": "Paris", "text": "sunny"}], **kwargs_doc).startswith(
        "<s><doc Paris: sunny>\n<|user|>hi")
    assert shown(chat_template_kwargs={"documents": "auto", "enable_thinking": None}) == "<s><|user|>hi<|assistant|>"
    for bad in ({"tools": 5}, {"tools": ["f"]}, {"documents": [1]}):  # transformers refuses them: vLLM's 400
        with pytest.raises(openai.BadRequestError) as err:
            shown(chat_template_kwargs=bad)
        assert err.value.param == f"chat_template_kwargs.{next(iter(bad))}"
    with pytest.raises(openai.BadRequestError) as err:  # still refused: the template would be given two
        shown(chat_template_kwargs={"messages": []})
    assert err.value.param == "chat_template_kwargs.messages"


def test_a_developer_message_s_tools_reach_the_template_as_vllm_gives_them(server, client):
    """vLLM's `_parse_chat_message_content` gives a developer message's `tools` to the template (its request schema,
    `CustomChatCompletionMessageParam`, takes them as openai's function tools: unknown keys dropped, `function`
    first); they were dropped. Tools not of that form, and another role's, are not given (vLLM's message union
    falls back to openai's developer message, which has none)."""
    sent = dict(WEATHER, extra=1)
    text = prompt_text(server, client, messages=[{"role": "developer", "content": "rules", "tools": [sent]}, HI[0]])
    want = [{"function": WEATHER["function"], "type": "function"}]
    assert text.startswith(f"<s><|developer|><own tools {json.dumps(want)}>rules<|user|>hi")
    for message in ({"role": "developer", "content": "rules", "tools": [{"type": "function", "function": {}}]},
                    {"role": "developer", "content": "rules", "tools": None},
                    {"role": "system", "content": "rules", "tools": [WEATHER]}):
        assert "<own tools" not in prompt_text(server, client, messages=[message, HI[0]])


def test_a_developer_message_s_tools_are_checked_and_shaped_as_openai_s_types_do_for_vllm():
    """vLLM reads a developer message's tools with openai's `ChatCompletionFunctionToolParam` (pydantic's lax mode):
    the template is given what that gives, and nothing where that refuses them."""
    from pydantic import TypeAdapter, ValidationError

    from api.chat import ChatMessage, chat_messages

    theirs = TypeAdapter(list[openai.types.chat.ChatCompletionFunctionToolParam])

    def given(tools):
        return chat_messages([ChatMessage.model_validate({"role": "developer", "content": "", "tools": tools})])[0]

    for tools in ([dict(WEATHER, extra=1)], [{"function": {"strict": None, "description": "d", "x": 2, "name": "f"},
                                              "type": "function"}], [{"type": "function",
                                                                      "function": {"name": "f", "strict": "true"}}]):
        assert json.dumps(given(tools)["tools"]) == json.dumps(theirs.validate_python(tools))
    for tools in ([{"type": "function", "function": {}}], [dict(WEATHER, type="custom")], "x", [{"function": {
            "name": "f", "parameters": "{}"}, "type": "function"}]):
        with pytest.raises(ValidationError):
            theirs.validate_python(tools)
        assert "tools" not in given(tools)


def test_null_message_fields_reach_the_template_as_transformers_gives_vllm_s_conversation(server, client):
    """vLLM's conversation holds a tool message's explicit null `tool_call_id`, and a null `tools` on every developer
    message; transformers' apply_chat_template (the version installed here) drops null message keys before the
    template reads them, so the prompt is what transformers renders of that conversation, without them."""
    transformers = pytest.importorskip("transformers")
    from pathlib import Path

    sent = [{"role": "developer", "content": "rules"}, TOOL_TURNS[1], dict(TOOL_TURNS[2], tool_call_id=None)]
    text = prompt_text(server, client, messages=sent)
    assert "<|tool|>sunny<|assistant|>" in text and "<for" not in text and "<own tools" not in text
    checkpoint = Path(__file__).resolve().parents[1] / "data" / "hf_tiny_llama"
    tok = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    conversation = [{"role": "developer", "content": "rules", "tools": None},  # as vLLM's parser leaves them
                    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
                     "reasoning": "ask the tool", "reasoning_content": "ask the tool"},
                    {"role": "tool", "content": "sunny", "tool_call_id": None}]
    assert tok.apply_chat_template(conversation, chat_template=SHOWING, tokenize=False,
                                   add_generation_prompt=True) == text


def _call(**fields) -> dict:
    """An assistant's turn holding one tool call of `fields` (OpenAI's form by default)."""
    return dict(TOOL_TURNS[1], tool_calls=[dict({"id": "c", "type": "function",
                                                 "function": {"name": "f", "arguments": "{}"}}, **fields)])


@pytest.mark.parametrize("arguments, shown", [("", ""), ('{"city": "Oslo"}', "Oslo"), ("{x", ""), ("[1]", ""),
                                              ("42", "")])
def test_a_tool_call_s_arguments_reach_the_template_as_an_object_as_vllm_gives_them(server, client, arguments,
                                                                                    shown):
    """vLLM's `_postprocess_messages` (vllm/renderers/chat_utils/parse_chat_message.py) parses each call's
    `arguments` string, and takes one that is empty, not JSON or not a JSON object as {} (with a warning): a
    conversation that holds a malformed call stays servable. Such a call was a 400 here, every later turn too."""
    turns = [HI[0], _call(function={"name": "f", "arguments": arguments})]
    assert f"<call f({shown})>" in prompt_text(server, client, messages=turns)


@pytest.mark.parametrize("call, why", [
    (dict(function={"arguments": "{}"}), "function.name"),
    (dict(function={"name": "f", "arguments": {"city": "Oslo"}}), "function.arguments"),
    (dict(function={"name": "f", "arguments": None}), "function.arguments"),
    (dict(function={"name": "f"}), "function.arguments"),
    (dict(id=None), "id"),
    (dict(type="custom"), "type")])
def test_a_tool_call_not_of_openai_s_form_is_a_400_naming_it_as_vllm_s(server, client, call, why):
    """vLLM's request schema takes an assistant's calls as OpenAI's `ChatCompletionMessageFunctionToolCallParam`
    (a string `id`, `type` "function", a `function` with a string `name` and a string `arguments`), else a 400;
    an object or null `arguments` was taken here."""
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.model, max_tokens=1, messages=[HI[0], _call(**call)])
    assert err.value.param == "messages.1.tool_calls" and why in err.value.message


def test_reasoning_effort_reaches_the_template_as_vllm_gives_it(server, client):
    """vLLM's `build_chat_params`: `reasoning_effort` is a template variable and sets `enable_thinking`
    (false for "none") unless `chat_template_kwargs` does; it was accepted and ignored."""
    assert prompt_text(server, client, messages=HI).endswith("<|assistant|>")
    assert prompt_text(server, client, messages=HI, reasoning_effort="none").endswith(
        "<|assistant|><effort none><think></think>")
    assert prompt_text(server, client, messages=HI, reasoning_effort="low").endswith("<|assistant|><effort low>")
    assert prompt_text(server, client, messages=HI, reasoning_effort="high",
                       extra_body={"chat_template_kwargs": {"enable_thinking": False}}).endswith(
        "<effort high><think></think>")
    assert prompt_text(server, client, messages=HI, reasoning_effort="low",  # vLLM's merge_kwargs: the request's wins
                       extra_body={"chat_template_kwargs": {"reasoning_effort": "high"}}).endswith("<effort low>")


def test_a_reasoning_effort_vllm_does_not_know_is_a_400_naming_it(server, client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.model, messages=HI, max_tokens=1, reasoning_effort="bogus")
    assert err.value.param == "reasoning_effort" and "'bogus'" in err.value.message


@pytest.mark.parametrize("request_, param", [
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}),
     "response_format"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]), "tools"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]),
     "messages.0.content"),
    (dict(presence_penalty=3.0), "presence_penalty")])
def test_every_refusal_parses_into_the_sdk_s_exception_as_vllm_s_error_body(server, client, request_, param):
    """The body is vLLM's ErrorResponse ({"error": {message, type, param, code: the status}}): the SDK's
    BadRequestError carries the message after "Error code: 400 - ", the param, and the code as "400"."""
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**dict(dict(model=server.model, messages=HI, max_tokens=1), **request_))
    e = err.value
    assert (e.param, e.code, e.type) == (param, "400", "invalid_request_error")
    assert e.message.startswith("Error code: 400 - ") and param.split(".")[0] in e.message


@pytest.mark.parametrize("request_, lacks", [(dict(response_format={"type": "json_object"}), "no structured output"),
                                             (dict(tool_choice="auto"), "no tool calls")])
def test_a_refused_feature_says_what_this_server_lacks(server, client, request_, lacks):
    """The app that relies on JSON mode or tools learns why it is refused, not only that."""
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=server.model, messages=HI, max_tokens=1, **request_)
    assert lacks in err.value.message and "leave it unset" in err.value.message


def test_the_responses_and_embeddings_apis_are_a_404_that_names_them_and_what_to_use(server, client):
    """vLLM serves /v1/responses for a generative model (and /v1/embeddings for a pooling one): an app
    switching from it is told which API this server lacks, and where its conversation goes instead; the
    404 said "the OpenAI API is under /v1" of a path under /v1. A 404: the SDK does not resend it."""
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=server.model, input="hi", max_output_tokens=4)
    assert "Responses API" in err.value.message and "send the conversation as messages" in err.value.message
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model=server.model, input="hi")
    assert "embeddings" in err.value.message and "under /v1" not in err.value.message
    for method, path, named in [("GET", "/v1/chat/completions/chatcmpl-1", "stored chat completions"),
                                ("POST", "/v1/audio/speech", "audio API"),  # what lies below a path named
                                ("POST", "/v1/embeddingsx", "not a path of this server")]:  # a path's own only
        r = httpx.request(method, server.url + path, json={}, timeout=60)
        assert r.status_code == 404 and named in r.json()["error"]["message"], (path, r.text)


def test_a_full_server_s_429_is_resent_by_the_sdk_after_its_retry_after_then_raised_readable():
    """When more requests would wait than `scheduler.max_waiting`, the 429 carries `Retry-After: 1`, which
    the SDK honours: it resends the request `max_retries` times (each counted as refused), then raises a
    RateLimitError whose message says why. vLLM queues without a bound (no 429): docs/serving.md."""
    import threading

    from tests.serving.utils import body, outcomes, server_cfg, status, wait_for

    cfg = server_cfg(devices=1, pp=1, max_waiting=1, clock="paced", pace_factor=1e4)  # one lane, one wait
    with Server(cfg, "local") as s:
        def hold() -> None:  # a request that runs for minutes of wall time, until the server stops (aborted)
            try:
                with httpx.stream("POST", s.url + "/v1/completions", json=body(max_tokens=400, stream=True),
                                  timeout=120) as r:
                    for _ in r.iter_lines():
                        pass
            except httpx.HTTPError:
                pass

        holders = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
        for t in holders:
            t.start()
        wait_for(lambda: (st := status(s.url))["num_running"] == 1 and st["num_waiting"] == 1,
                 "the lane and the queue full")
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=2, timeout=60)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="tiny", messages=HI, max_tokens=1)
        refused = outcomes(s.url)[("rejected", "queue_full")]
    # the stop aborted both holders: no wait for the queued one's first token (~15 s paced), as hanging up did
    for t in holders:
        t.join(60)
    e = err.value
    assert e.response.headers["retry-after"] == "1" and e.type == "rate_limit_error" and e.code == "429"
    assert "scheduler.max_waiting=1" in e.message and e.body["cent"]["code"] == "queue_full"
    assert refused == 3  # the request and the SDK's two resends
