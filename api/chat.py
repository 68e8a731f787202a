"""Chat messages as requests send them (`ChatMessage`, its text `ContentPart`s) and as a chat template
reads them (`chat_messages`), for `/v1/chat/completions` and `/tokenize` (api/protocol.py)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from typing_extensions import Required, TypedDict

from api.checks import ApiError, check_unicode, short

log = logging.getLogger("cent.server")

TEXT_PART_KEYS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal",
                  "thinking": "thinking"}
"""The content parts vLLM's chat reads as text, and the field that holds it (vLLM's chat_utils)."""


class ContentPart(BaseModel):
    """An OpenAI message content part; only `text` parts can be served (a text-only model)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text"]
    text: str


CALL_EXAMPLE = '{"id": "call_1", "type": "function", "function": {"name": "...", "arguments": "{...}"}}'
"""An assistant's tool call as OpenAI's API writes it, for the error of a malformed one."""
TOOL_EXAMPLE = '{"type": "function", "function": {"name": "...", "parameters": {...}}}'
"""A tool definition as OpenAI's API writes it, for the error of a malformed one."""
_FUNCTION_FIELDS = (("description", str), ("parameters", dict), ("strict", bool), ("defer_loading", bool))
"""A tool's `function` fields besides its name, and their type when set (vLLM's `FunctionDefinition`)."""


class _DeveloperFunction(TypedDict, total=False):
    """A developer message's tool's `function`, as openai's `FunctionDefinition` types it."""

    name: Required[str]
    description: str
    parameters: dict[str, object]
    strict: Union[bool, None]


class _DeveloperTool(TypedDict, total=False):
    """A developer message's tool, as openai's `ChatCompletionFunctionToolParam` types it."""

    function: Required[_DeveloperFunction]
    type: Required[Literal["function"]]


_DEVELOPER_TOOLS = TypeAdapter(list[_DeveloperTool])
"""A developer message's `tools` as vLLM's request schema reads them (its `CustomChatCompletionMessageParam.tools`,
vllm/renderers/chat_utils/types.py): pydantic's lax mode, each rebuilt in the types' key order (`function` first),
keys they do not name dropped."""


def _developer_tools(extra: dict | None) -> list[dict] | None:
    """A developer message's `tools` as vLLM gives them to the chat template (`_parse_chat_message_content`,
    vllm/renderers/chat_utils/parse_chat_message_content.py, sets a developer message's `tools` to its own):
    checked and shaped by `_DEVELOPER_TOOLS`. None when unset or null (vLLM's null is dropped by transformers'
    apply_chat_template, which drops every null message key), or when they do not match those types: vLLM's
    message union then takes the message as openai's plain developer message, which has no `tools`."""
    tools = (extra or {}).get("tools")
    if tools is None:
        return None
    try:
        return _DEVELOPER_TOOLS.validate_python(tools)
    except ValidationError:
        log.warning("a developer message's tools are not OpenAI function tools: the chat template is not given "
                    "them, as vLLM does not give them")
        return None


def _arguments_object(function: dict) -> dict:
    """A call's `arguments` JSON string as the object a template reads; {} for one that is empty, not JSON or
    not an object, logged, as vLLM's `_postprocess_messages` takes it."""
    text = function["arguments"]
    try:
        arguments = json.loads(text) if text else {}
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        arguments = None
    if not isinstance(arguments, dict):
        log.warning("tool call %r's arguments are not a JSON object (%d characters): given to the chat template "
                    "as {}, as vLLM gives them", function["name"][:80], len(text))
        arguments = {}
    return arguments


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: str = Field(min_length=1)
    """Any role, passed to the chat template as vLLM passes it (system, user, assistant, tool,
    developer; also OpenAI's older `function`, Llama 3.1's `ipython`): a template that does not
    know it says so, a 400."""
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    """OpenAI's participant name, given to the template with the message (vLLM passes it to any role's)."""
    tool_calls: list[dict[str, Any]] | None = None
    """An assistant's calls, OpenAI's `[{id, type, function: {name, arguments}}]`: given to the template
    with each `arguments` JSON string parsed into an object (`_calls_for_template`), as vLLM gives them (this server
    makes no calls itself, but a conversation may hold some: their text counts in the prompt)."""
    tool_call_id: str | None = None
    """A `tool` message's answer to that call, given to the template as vLLM gives it (a null one not:
    `chat_messages`)."""
    reasoning: str | None = None
    """An assistant's reasoning of an earlier turn (vLLM's; `reasoning_content`, its older name, is read
    as it), given to the template under both names as vLLM gives it."""

    @model_validator(mode="before")
    @classmethod
    def _older_reasoning_name(cls, data: Any) -> Any:
        """`reasoning_content` as `reasoning` when that is unset (vLLM renames it so)."""
        if isinstance(data, dict) and data.get("reasoning_content") is not None and data.get("reasoning") is None:
            data = {k: v for k, v in data.items() if k != "reasoning_content"} | {
                "reasoning": data["reasoning_content"]}
        return data

    @field_validator("tool_calls")
    @classmethod
    def _calls_for_template(cls, calls: list[dict] | None) -> list[dict] | None:
        """Each call in OpenAI's form, as vLLM's request schema takes it (openai's
        `ChatCompletionMessageFunctionToolCallParam`: a string `id`, `type` "function", a `function` with a
        string `name` and a string `arguments`), else a 400 naming the field; its `arguments` parsed for the
        template, as vLLM parses them (vllm/renderers/chat_utils/parse_chat_message.py `_postprocess_messages`:
        transformers' tool-use templates read them as a mapping), one that is empty, not JSON or not a JSON
        object as {} with a warning, as vLLM takes it (refused, it would fail every later turn of that
        conversation). An empty list is no calls (vLLM drops it)."""
        out = []
        for i, call in enumerate(calls or ()):
            function = call.get("function")
            why = ("id" if not isinstance(call.get("id"), str) else
                   "type" if call.get("type") != "function" else
                   "function" if not isinstance(function, dict) else
                   "function.name" if not isinstance(function.get("name"), str) else
                   "function.arguments" if not isinstance(function.get("arguments"), str) else None)
            if why is not None:
                raise PydanticCustomError("tool_call", "call {i}'s {why} is missing or invalid; send {example}",
                                          {"i": i, "why": why, "example": CALL_EXAMPLE})
            out.append(dict(call, function=dict(function, arguments=_arguments_object(function))))
        return out or None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        """Every part that is text as vLLM reads it (a `text`, `input_text` or `output_text` part, an
        assistant's `refusal`, a `thinking` part, a bare string) as a text part, the empty ones left
        out as vLLM leaves them; anything else refused naming the part, not with the union's first
        branch ("Input should be a valid string")."""
        if isinstance(content, list):
            parts = []
            for i, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                key = TEXT_PART_KEYS.get(kind) if isinstance(kind, str) else None
                text = part if isinstance(part, str) else part.get(key) if key else None
                if isinstance(text, str):
                    if text:
                        parts.append({"type": "text", "text": text})
                    continue
                if key is not None:
                    why = f"has no string '{key}'"
                elif kind is not None:
                    why = f"is of type '{str(kind)[:40]}': the models served here take text only"
                else:
                    why = "is not a text part"
                raise PydanticCustomError("content_part", "part {i} {why}; send parts {example}",
                                          {"i": i, "why": why, "example": '{"type": "text", "text": "..."}'})
            return parts
        if content is not None and not isinstance(content, str):
            raise PydanticCustomError("content_type", "should be a string or a list of text parts")
        return content

    def text(self) -> str:
        """The content as the template sees it: text parts one per line, as vLLM joins them."""
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


def chat_messages(messages: list[ChatMessage]) -> list[dict]:
    """The messages as a chat template reads them, as vLLM gives them (vllm/renderers/chat_utils/
    parse_chat_message_content.py `_parse_chat_message_content`): role and content text (text parts joined), any
    message's `name`, an assistant's `tool_calls` (arguments parsed) and `reasoning` (also as
    `reasoning_content`), a tool message's `tool_call_id`, a developer message's `tools` (`_developer_tools`);
    each only when set and not null. vLLM gives a null `tool_call_id` (and a developer message without tools a
    null `tools`), but the apply_chat_template of transformers 5.25 (the one installed beside this server;
    transformers 4's kept them) drops every null key of a message before the template reads it, so a template
    never sees them. A template that reads none of them renders as before."""
    out = []
    for m in messages:
        msg = {"role": m.role, "content": m.text()}
        if m.role == "assistant" and m.tool_calls:
            msg["tool_calls"] = m.tool_calls
        if m.role == "assistant" and m.reasoning is not None:
            msg["reasoning"] = msg["reasoning_content"] = m.reasoning
        if m.role == "tool" and m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            msg["name"] = m.name
        if m.role == "developer" and (tools := _developer_tools(m.model_extra)) is not None:
            msg["tools"] = tools
        out.append(msg)
    return out


def tool_definitions(tools) -> list[dict] | None:
    """A request's `tools` as the chat template is given them (transformers' and vLLM's `tools`), in the shape
    vLLM gives them (its `ChatCompletionToolsParam.model_dump()`, vllm/entrypoints/generate/base/protocol.py
    `FunctionDefinition`): `{"type": "function", "function": {name, description, parameters}}`, the last two
    null when left out, `strict` and `defer_loading` only when set (a tool's `defer_loading` its function's
    too), other keys dropped, so a template that writes a tool as JSON renders vLLM's text. Checked as vLLM
    checks them (ApiError 400 naming `tools.N` otherwise); None for none."""
    if not tools:
        return None
    if not isinstance(tools, list):
        raise ApiError(f"tools={short(tools)} is invalid: send a list of tools", "tools")
    check_unicode(tools, "tools")  # an extra field of the request: its `_valid_unicode` reads the declared ones
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function" \
                or not isinstance(function.get("name"), str) \
                or not all(isinstance(function.get(k), (kind, type(None))) for k, kind in _FUNCTION_FIELDS) \
                or not isinstance(tool.get("defer_loading"), (bool, type(None))):
            raise ApiError(f"tools.{i} is invalid: send {TOOL_EXAMPLE}", f"tools.{i}")
        defer = tool.get("defer_loading") if function.get("defer_loading") is None else function["defer_loading"]
        shaped = {"name": function["name"], "description": function.get("description"),
                  "parameters": function.get("parameters")}
        shaped |= {k: v for k, v in (("strict", function.get("strict")), ("defer_loading", defer)) if v is not None}
        out.append({"type": "function", "function": shaped}
                   | ({"defer_loading": tool["defer_loading"]} if tool.get("defer_loading") is not None else {}))
    return out


UNSET_KWARG_VALUES = (None, "auto")
"""`chat_template_kwargs` values vLLM's `merge_kwargs` (vllm/renderers/params.py) takes as unset: the template
is not given them."""
REQUEST_FIELD_KWARGS = ("add_generation_prompt", "continue_final_message")
"""`chat_template_kwargs` the request's own fields of those names replace (vLLM's `build_chat_params` merges
the kwargs under them, and both fields always have a value): the kwargs' are dropped."""


def _template_objects(value: Any, name: str) -> Any:
    """A `chat_template_kwargs` `tools` or `documents` as transformers' apply_chat_template takes them: iterated,
    each item an object (a string or an object iterates to its characters or keys, so only an empty one
    passes), else a 400 naming it, as vLLM answers the template's refusal."""
    if not isinstance(value, (list, str, dict)) or not all(isinstance(x, dict) for x in value):
        raise ApiError(f"chat_template_kwargs.{name}={short(value)} is invalid: send a list of objects",
                       f"chat_template_kwargs.{name}")
    return value


@dataclass(frozen=True)
class TemplateInputs:
    """What a chat's template is rendered with and how its text is encoded (`template_inputs`)."""

    variables: dict | None
    """The template's variables beyond the messages, tools and documents; None for none."""
    tools: list[dict] | None
    documents: Any
    add_special_tokens: bool
    """Add the tokenizer's special tokens to the rendered text (the request's `add_special_tokens`)."""


def template_inputs(kwargs: dict | None, tools: list[dict] | None, documents: list[dict] | None,
                    add_special_tokens: bool = False) -> TemplateInputs:
    """The chat template's variables, tools and documents from a request's `chat_template_kwargs` (with what
    the request adds to them: `ChatCompletionRequest.template_variables`), its own `tools` (checked and shaped:
    `tool_definitions`) and `documents`, merged as vLLM merges them: `ChatCompletionRequest.build_chat_params`
    (vllm/entrypoints/openai/chat_completion/protocol.py) lets the request's `documents`,
    `add_generation_prompt` and `continue_final_message` replace the kwargs' (the last two always:
    `REQUEST_FIELD_KWARGS`), and vllm/renderers/online_renderer.py `preprocess_chat` (`ChatParams.with_defaults`)
    lets the kwargs' `tools` replace the request's; a kwarg set to null or "auto" is dropped
    (`UNSET_KWARG_VALUES`). The kwargs' tools go to the template as sent (vLLM does not shape them), a list of
    objects (`_template_objects`), and so do their documents. Their `bos_token` and `eos_token` stay variables,
    which transformers' apply_chat_template puts over the tokenizer's (`render_chat`). Their `tokenize` is not
    a variable: vllm/renderers/hf.py `safe_apply_chat_template` passes it to apply_chat_template, which when it
    is true encodes the text with no special tokens added, so `add_special_tokens` is then false.

    Raises ApiError 400 where vLLM fails the request: a `chat_template` not null (even "auto": vLLM refuses a
    request's template unless started with --trust-request-chat-template, vllm/renderers/online_renderer.py
    `validate_chat_template`; this server takes none), and `messages` (apply_chat_template gives the template
    the request's messages and the kwargs to one call, which raises on the two)."""
    kwargs = dict(kwargs or {})
    if kwargs.get("chat_template") is not None:
        raise ApiError("chat_template_kwargs.chat_template sets a chat template, which vLLM refuses unless started "
                       "with --trust-request-chat-template (this server takes none): drop it to use the model's "
                       "template", "chat_template_kwargs.chat_template")
    kwargs = {k: v for k, v in kwargs.items() if v not in UNSET_KWARG_VALUES}
    if "messages" in kwargs:
        raise ApiError("chat_template_kwargs.messages is refused, as vLLM fails it (the template is given the "
                       "request's messages, and transformers refuses a second): send them in the request's messages "
                       "and drop chat_template_kwargs.messages", "chat_template_kwargs.messages")
    for name in REQUEST_FIELD_KWARGS:
        kwargs.pop(name, None)
    if kwargs.pop("tokenize", False):
        add_special_tokens = False
    if "tools" in kwargs:
        tools = list(_template_objects(kwargs.pop("tools"), "tools"))
    given = kwargs.pop("documents", None)
    if documents is None and given is not None:
        documents = _template_objects(given, "documents")
    return TemplateInputs(kwargs or None, tools, documents, add_special_tokens)
