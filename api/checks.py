"""The rules request fields share, apart from the pydantic models that hold them (api/protocol.py):
`ApiError`, how a broken rule is answered (400 naming the parameter, or another status), and `short`
to quote a value in it; lax integers (`LaxInt`, as vLLM 0.33's lax pydantic mode takes them); the
limits (`MAX_*`); the nullable fields; the parameters this server refuses unless off (`UNSUPPORTED`,
`OFF_TESTS`); valid Unicode; a logprobs count's range; and the field a malformed prompt's error names
(`prompt_error`)."""
from __future__ import annotations

from typing import Annotated

from pydantic import Strict, TypeAdapter

LaxInt = Annotated[int, Strict(False)]
"""An integer request field, validated as vLLM 0.33's request models validate theirs: pydantic's lax mode
(vLLM's OpenAIBaseModel, vllm/entrypoints/serve/engine/protocol.py, sets no strictness), which takes a
numeric string (`"5"`, `" 5 "`, `"+5"`), a float without a fraction (`5.0`) and a boolean (`true` is 1),
and refuses `5.5`, `"5.5"`, `"1e3"` and `""` (a 400 naming the field, as any schema error)."""

LAX_INT = TypeAdapter(LaxInt)

MAX_N = 16
"""Choices per request at most."""
MAX_STOP_STRINGS = 4
"""OpenAI's limit on `stop`."""
MAX_STOP_CHARS = 1024
"""Characters per stop string at most."""
MAX_BAD_WORDS = 256
"""Entries of `bad_words` at most: each costs a comparison per generated token (vLLM's newer releases cap
them as well)."""
MAX_STOP_TOKEN_IDS = 256
"""Entries of `stop_token_ids` at most."""
MAX_LOGPROBS = 20
"""Most likely alternatives per token at most (`logprobs`, `top_logprobs`, `prompt_logprobs`): OpenAI's
chat limit and vLLM's default `max_logprobs`."""
INT64_RANGE = (-2 ** 63, 2 ** 63 - 1)
"""`seed` and `priority` are int64s (OpenAI, vLLM); negative seeds are taken modulo 2**64."""
MAX_ARRIVAL_S = 1e9
"""Largest `arrival_s` (simulated seconds, ~32 years): a replay arrival, not a clock jump to 1e300."""
NULLABLE = ("n", "stream", "echo", "presence_penalty", "frequency_penalty")
"""Request fields with a non-null default that OpenAI's API declares nullable (vLLM's `Optional`):
an explicit null means the default."""
UNSUPPORTED = {"best_of": (1,), "suffix": ("",), "tools": ([],), "functions": ([],),
               "tool_choice": ("none",), "response_format": ({"type": "text"},),
               "use_beam_search": (False,),
               "guided_json": (), "guided_regex": (), "guided_choice": (), "guided_grammar": (),
               "structural_tag": (), "structured_outputs": (),
               "logits_processors": (), "prompt_embeds": (), "chat_template": (), "return_tokens_as_token_ids": (False,),
               "logprob_token_ids": ([],), "repetition_detection": ({"max_pattern_size": 0},)}
"""OpenAI parameters (and vLLM's sampling extensions) this server cannot honour, with the values that
mean "off" (null is off too; `()`: only null; `OFF_TESTS` holds the rule where "off" is more than one
value). vLLM's structured outputs (`guided_*`, `structured_outputs`) are refused as `response_format`'s
JSON is; vLLM 0.33's `logprob_token_ids` (those ids' logprobs instead of the top ones) and
`repetition_detection` (an early stop) too, unless its `max_pattern_size` is 0 (or left out)."""

_NO_TOOLS = ("which makes no tool calls (it has no tool-call parser)", "")
_NO_STRUCTURE = ("which enforces no structured output (JSON mode, a schema, a regex, a choice or a grammar)",
                 " and ask for the format in the prompt")
UNSUPPORTED_WHY = {"tools": (_NO_TOOLS[0], "; with tool_choice \"none\" the chat template is given them, as vLLM "
                                          "gives them, and no call is made"),
                   "functions": _NO_TOOLS, "tool_choice": _NO_TOOLS,
                   "response_format": _NO_STRUCTURE, "structured_outputs": _NO_STRUCTURE,
                   "structural_tag": _NO_STRUCTURE,
                   **{f"guided_{k}": _NO_STRUCTURE for k in ("json", "regex", "choice", "grammar")},
                   "best_of": ("which samples each choice on its own", ""),
                   "use_beam_search": ("which has no beam search", "")}
"""What a refusal of an `UNSUPPORTED` parameter says this server lacks, and what to do besides leaving it
unset (an app that relies on the field learns why, not only that)."""


class ApiError(Exception):
    """A client mistake (or a server fault): becomes `{"error": {...}}` with `status`. `code` is
    this server's machine-readable reason (`context_length_exceeded`, `device_fault`, ...; None for
    most 400s): the body sends it as `error.cent.code`, and `error.code` is the status, as vLLM
    sends it (its ErrorInfo.code is the integer HTTP status: vLLM 0.33,
    vllm/entrypoints/serve/engine/protocol.py and OpenAIServing.create_error_response)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type_, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status,
                          "cent": {"code": self.code}}}


def short(value, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, for error messages that quote client input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _repetition_detection_is_off(value) -> bool:
    """Whether vLLM 0.33's `repetition_detection` object asks for nothing. The facts are vLLM's
    (vllm/sampling_params.py `RepetitionDetectionParams`, vllm/v1/core/sched/utils.py
    `check_sequence_repetition`): a field left out is 0, `max_pattern_size` 0 detects nothing, negative
    sizes and a `min_pattern_size` over `max_pattern_size` are refused. A null field is taken as left
    out. Raise ApiError (400, the field's path) for a value vLLM would refuse as malformed."""
    if not isinstance(value, dict):
        raise ApiError(f"repetition_detection={short(value)} is invalid: send an object (or null)",
                       "repetition_detection")
    got = {}
    for name in ("max_pattern_size", "min_pattern_size", "min_count"):
        sent = 0 if value.get(name) is None else value[name]
        is_size = name != "min_count"  # vLLM checks min_count (>= 2) only when detection is on
        try:  # a dataclass's int in vLLM's pydantic request model: lax ("2", 2.0 and true are integers)
            number = LAX_INT.validate_python(sent)
        except ValueError:
            number = None
        if number is None or (is_size and number < 0):
            raise ApiError(f"repetition_detection.{name}={short(sent)} is invalid: use an integer"
                           + (" >= 0" if is_size else ""), f"repetition_detection.{name}")
        got[name] = number
    if got["min_pattern_size"] > got["max_pattern_size"]:
        raise ApiError(f"repetition_detection.min_pattern_size={got['min_pattern_size']} is invalid: it cannot "
                       f"exceed max_pattern_size ({got['max_pattern_size']})", "repetition_detection.min_pattern_size")
    return got["max_pattern_size"] == 0


OFF_TESTS = {"repetition_detection": _repetition_detection_is_off}
"""`UNSUPPORTED` parameters whose "off" is a rule rather than a value: name -> a test of the value
(True: off, passes; False: it would act, refused; ApiError: malformed)."""


def check_unicode(value, path: str) -> None:
    """Raise ApiError (400) at the first string that cannot be encoded (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(f"{path} is not valid Unicode (a lone surrogate escape?): send UTF-8 text",
                           path.split(".")[0] or None) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_unicode(k, path or "body")
            check_unicode(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_unicode(v, f"{path}.{i}")


def null_is_default(data, fields: tuple[str, ...]):
    """`data` without the explicit nulls of `fields`: OpenAI's API declares them nullable (vLLM's
    `Optional`), and clients send `"n": null` or `"stream": null` for "the default"."""
    if isinstance(data, dict) and any(data.get(f, 0) is None for f in fields):
        return {k: v for k, v in data.items() if not (k in fields and v is None)}
    return data


def logprob_count(value: int | None, name: str) -> int | None:
    if value is not None and not 0 <= value <= MAX_LOGPROBS:
        raise ApiError(f"{name}={short(value)} is invalid: use 0..{MAX_LOGPROBS}", name)
    return value


def prompt_error(prompt) -> tuple[str, str]:
    """(param, message) for a `prompt` of none of its four shapes, naming the first element that
    breaks the shape its first element starts (pydantic reports every branch of the union, first
    the string one: "Input should be a valid string" for a list of token ids)."""
    shapes = "a string, a list of strings, a list of token ids (integers) or a list of such lists"
    if not isinstance(prompt, list) or not prompt:
        return "prompt", f"prompt must be {shapes} (got {short(prompt)})"

    def is_id(x) -> bool:  # what the prompt's LaxInt takes: 5, "5", 5.0, true
        try:
            LAX_INT.validate_python(x)
        except ValueError:
            return False
        return True

    head = prompt[0]
    if isinstance(head, str) or is_id(head):  # a numeric string starts a list of ids (a list of strings passed)
        kind, ok = ("a token id is an integer", is_id) if is_id(head) else \
            ("a list of strings holds strings only", lambda x: isinstance(x, str))
        i = next((i for i, x in enumerate(prompt) if not ok(x)), None)
        if i is not None:
            return f"prompt.{i}", f"prompt.{i}: {kind} (got {short(prompt[i])})"
    if isinstance(head, list):
        for i, ids in enumerate(prompt):
            if not isinstance(ids, list):
                return f"prompt.{i}", f"prompt.{i}: a list of token-id lists holds lists only (got {short(ids)})"
            for j, x in enumerate(ids):
                if not is_id(x):
                    return f"prompt.{i}.{j}", f"prompt.{i}.{j}: a token id is an integer (got {short(x)})"
    return "prompt.0", f"prompt.0: a prompt list starts with a string, a token id or a list of token ids " \
                       f"(got {short(head)})"
