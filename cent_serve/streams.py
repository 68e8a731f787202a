"""The engine thread's end of the requests' streams (`StreamDelivery`, a part of `serving.EngineLoop`).

A round's progress becomes one `delta.Delta` per request that moved (`_deliver`: its new tokens, the
part of its text that is final, its end), and the deltas go to their event loops in one wake-up per
loop (`_flush`): on the virtual clock at most every FLUSH_EVERY_S while the engine keeps stepping, on
the paced clock every round. Runs on the engine thread only.
"""
from __future__ import annotations

import logging
import time

from cent_serve.delta import Delta, _put_all, _stable
from cent_serve.request import Request

log = logging.getLogger("cent.serving")  # the engine loop's logger: its lines are the loop's

FLUSH_EVERY_S = 0.005
"""Virtual clock: the engine thread hands its rounds' deltas to the event loop at most this often
(wall seconds) while it keeps stepping, and always before it waits and after it takes a command (an
abort's end). A round of a fast virtual clock takes about a millisecond; a wake-up per round had
the event loop write each stream one token at a time, each write giving the GIL up behind the
engine thread. A delta waits at most this long plus one round: rounds that each take longer hand
theirs over every round, but one that runs long after fast ones (a stalled device, a collection
pause) holds the last few milliseconds' deltas until it ends. The paced clock hands every round's
at once (its tokens are due at their times)."""


class StreamDelivery:
    """`EngineLoop`'s delivery to the streams. The loop holds what it reads: `engine`, `clock`,
    `pace_factor`, `pace` (`PaceMonitor`), `wall_delay_s`, the callbacks `on_tokens`, `on_late` and
    `on_finish` (called through `_observe`: one that raises is logged, and the delivery goes on),
    `streams` (request id -> its stream), `_outbox` (event loop -> items delivered since the last
    flush) and `_flushed_at`."""

    def _deliver(self, req: Request) -> None:
        entry = self.streams.get(req.request_id)
        if entry is None:
            return
        loop, q, tag, sent, final_only = entry
        n_tok, n_chr, observed, _ = sent
        if self.on_tokens is not None and len(req.output_ids) > observed:
            # the live metrics see each round's tokens, streamed or not
            self._observe("on_tokens", self.on_tokens, req, observed)
        if self.clock == "paced" and len(req.output_ids) > observed:  # the first new token, the latest of them
            due_s = req.token_times_s[observed]
            sent[3] = self.pace.delivered(-self.wall_delay_s(due_s), (due_s - req.arrival_s) * self.pace_factor,
                                          sent[3])
        sent[2] = len(req.output_ids)
        if final_only and not req.is_finished:
            return
        text = self.engine.text(req)
        if not req.is_finished:
            partial = text.endswith("\ufffd") and self.engine.tokenizer.partial_tail(req.output_ids)
            # a stop string kept in the text (include_stop_str_in_output) cuts nothing streamed already
            text = _stable(text, () if req.params.include_stop_str_in_output else req.params.stop, partial)
        delta = Delta(req.output_ids[n_tok:], req.token_times_s[n_tok:], text[n_chr:] if len(text) > n_chr else "",
                      finished=req.is_finished, finish_reason=req.finish_reason, error=req.error,
                      logprobs=req.logprobs[n_tok:], stop_reason=req.stop_reason, retry_after_s=req.retry_after_s,
                      prompt_logprobs=req.prompt_logprobs if n_tok == 0 and req.output_ids else None)
        sent[0], sent[1] = len(req.output_ids), max(n_chr, len(text))
        if req.is_finished:
            delta.timing = req.timing()
            del self.streams[req.request_id]
            if self.clock == "paced":
                if self.on_late is not None and req.output_ids:
                    self._observe("on_late", self.on_late, sent[3])
                if not self.streams:  # nothing in flight: no lag, whatever the last round's was
                    self.pace.on_schedule()
            self.engine.forget(req.request_id)
            if self.on_finish is not None:
                self._observe("on_finish", self.on_finish, req)
        self._outbox.setdefault(loop, []).append((q, (tag, delta)))

    def _flush(self, force: bool = True) -> None:
        """Hand the deltas delivered since the last flush to their event loops: one wake-up per loop
        for a whole round's (or, not `force`d on the virtual clock, the rounds' of the last
        FLUSH_EVERY_S), not one per sequence and token. An event loop woken for each delta of a
        fast round (a virtual clock, many sequences) fell behind the engine thread, and a /health
        behind that backlog waited 14 s (8 sequences of 4,000 tokens, llama2-70b timing-only)."""
        if not self._outbox:
            return
        now = time.monotonic()
        if not force and self.clock == "virtual" and now - self._flushed_at < FLUSH_EVERY_S:
            return
        self._flushed_at = now
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:  # never blocks: the queues are unbounded and a slow client only delays its own handler
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the server's event loop is closed (shutdown): nobody is listening
                log.debug("event loop closed: %d deltas dropped", len(items))
