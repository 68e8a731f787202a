"""Chat templates: a chat's messages as the prompt text of its tokenizer's template (`tokenizer.encode_chat`
makes token ids of it).

A chat prompt is the template rendered with Jinja the way `transformers`' `apply_chat_template`
renders it (a sandbox, `trim_blocks`, `lstrip_blocks`), then encoded without another BOS (the
template writes `bos_token` itself), as vLLM's chat endpoint does. The tokenizers (`tokenizer`)
carry the template: their checkpoint's, else `DEFAULT_CHAT_TEMPLATE`.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Protocol


class ChatTokenizer(Protocol):
    """What a chat's rendering reads of a tokenizer: its template and the special tokens' text the
    template writes (every `tokenizer.Tokenizer` has them)."""

    chat_template: str
    bos_token: str
    eos_token: str


DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
"""The chat template of models without their own: one `<|role|>` line and the text per turn, then
the assistant's cue. Exported with the tokenizer, so a client renders the same prompt."""


@lru_cache(maxsize=8)
def _compiled(template: str):
    """A chat template compiled as `transformers` compiles it: a sandbox, `trim_blocks` and
    `lstrip_blocks`, the `loopcontrols` extension, its `tojson` (no ASCII escaping), and the
    globals `raise_exception` and `strftime_now`. Raises jinja2's TemplateSyntaxError."""
    from datetime import datetime

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


def check_chat_template(template: str, where) -> None:
    """Raise ValueError, naming the file, if a chat template does not compile (checked when the
    tokenizer loads, so a broken template stops the server before it starts, not a request)."""
    from jinja2.exceptions import TemplateSyntaxError

    try:
        _compiled(template)
    except TemplateSyntaxError as exc:
        raise ValueError(f"the chat template in {where} does not compile (line {exc.lineno}: {exc.message}): "
                         "fix tokenizer_config.json's chat_template") from None


TEMPLATE_VARIABLES = ("messages", "add_generation_prompt", "tools", "documents")
"""The variables `render_chat` gives a chat template itself, which its `variables` may not hold (a request's
`chat_template_kwargs` add others; the tokenizer's `bos_token` and `eos_token` they may replace)."""


def render_chat(tok: ChatTokenizer, messages: list[dict], add_generation_prompt: bool = True,
                continue_final_message: bool = False, variables: dict | None = None,
                tools: list[dict] | None = None, documents: list[dict] | None = None) -> str:
    """`messages` ({role, content: str}) as the prompt text of `tok`'s chat template, with the
    variables `transformers` passes (`tools`, OpenAI's tool definitions, and `documents`, for retrieval;
    or none) and `variables` (vLLM's
    `chat_template_kwargs`, e.g. Qwen 3's `enable_thinking`; none of TEMPLATE_VARIABLES), over the tokenizer's
    `bos_token` and `eos_token` (a variable of those names replaces them, as in transformers' apply_chat_template).
    Raises ValueError with the template's own message if it refuses them (`raise_exception`, a missing field).

    `continue_final_message` (transformers' and vLLM's option, which excludes
    `add_generation_prompt`): the text ends where the last message's content ends, without the
    end of its turn, so the model goes on with that message (an assistant reply begun)."""
    from jinja2.exceptions import TemplateError

    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt exclude each other: set "
                         "add_generation_prompt to false to continue the last message")
    given = {"bos_token": tok.bos_token, "eos_token": tok.eos_token, **(variables or {})}
    assert not given.keys() & set(TEMPLATE_VARIABLES), sorted(given.keys() & set(TEMPLATE_VARIABLES))

    def render(msgs: list[dict]) -> str:
        try:
            return _compiled(tok.chat_template).render(**given, messages=msgs,
                                                       add_generation_prompt=add_generation_prompt, tools=tools,
                                                       documents=documents)
        except (TemplateError, TypeError) as exc:
            raise ValueError(f"the chat template refused these messages: {exc}: change the messages") from None

    text = render(messages)
    if not continue_final_message:
        return text
    final = messages[-1]["content"]
    if not final.strip():
        raise ValueError("continue_final_message needs text in the last message to continue: give it some")
    # where the last message's content ends: marked by a tag no content holds (its own text may also
    # stand in the template's closing tokens: "end" in "<|im_end|>")
    tagged = render(messages[:-1] + [dict(messages[-1], content=final + CUT_TAG)])
    at = tagged.rfind(CUT_TAG)
    if at < 0:
        raise ValueError("continue_final_message: the chat template changed the last message's text, so "
                         "where it ends cannot be found: send it as the template renders it")
    head = tagged[:at]
    # a template that trims the content (`| trim`) kept its trailing space before the tag: cut after the
    # trimmed text then, as transformers' apply_chat_template does
    return head if text.startswith(head) else head.rstrip()


CUT_TAG = "\u2063cent-cut\u2063"
"""Appended to the last message to find where its content ends in the rendered chat (a name between
invisible separators: no chat template or message holds it)."""
