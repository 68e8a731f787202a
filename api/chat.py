"""Chat messages as requests send them (`ChatMessage`, its text `ContentPart`s) and as a chat template
reads them (`chat_messages`), for `/v1/chat/completions` and `/tokenize` (api/protocol.py)."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

TEXT_PART_KEYS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal",
                  "thinking": "thinking"}
"""The content parts vLLM's chat reads as text, and the field that holds it (vLLM's chat_utils)."""


class ContentPart(BaseModel):
    """An OpenAI message content part; only `text` parts can be served (a text-only model)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: str = Field(min_length=1)
    """Any role, passed to the chat template as vLLM passes it (system, user, assistant, tool,
    developer; also OpenAI's older `function`, Llama 3.1's `ipython`): a template that does not
    know it says so, a 400."""
    content: Union[str, list[ContentPart], None] = None

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
    """The messages as a chat template reads them: role and content text (text parts joined)."""
    return [{"role": m.role, "content": m.text()} for m in messages]
