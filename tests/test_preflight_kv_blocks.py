"""The preflight counts a sequence's KV as the scheduler admits it: whole KV blocks of
`scheduler.kv_block_tokens` tokens per kind of device (`cent_serve.kv_room`), not bytes. Counted in
bytes, tiny on one 12-row device held 602 tokens of KV, so `model.max_seq_len=600` passed the
preflight, while the device holds 37 blocks (592 tokens) and the engine refused every prompt
of 592 tokens or more ("needs 38 KV blocks ... a replica holds 37")."""
from __future__ import annotations

import dataclasses
import json

import pytest

from cent_serve.config import CentConfig, ParallelConfig, apply_overrides, model_preset
from cent_serve.engine import Engine
from cent_serve.preflight import check_devices_hold
from cent_serve.request import RequestParams
from cent_serve.scheduler import kv_room
from cent_serve.timing.mapping import CapacityError, check_capacity, resolve_mapping

S, F = "sliding_attention", "full_attention"
TINY = model_preset("tiny")
GEMMA2_LIKE = dataclasses.replace(TINY, sliding_window=16, layer_types=(S, F) * 4, model_type="gemma2")
GEMMA3_LIKE = dataclasses.replace(TINY, sliding_window=16, layer_types=(S,) * 5 + (F,) + (S,) * 2,
                                  model_type="gemma3_text")


def _cfg(model, devices: int = 1, pp: int = 1, rows: int = 12) -> CentConfig:
    cfg = CentConfig(model=model, parallel=ParallelConfig(devices, pp, 1), numerics="off")
    cfg.device.rows_per_bank = rows  # 12 MiB: tiny's weights and a few dozen KV blocks
    return cfg


def _preflight_passes(cfg: CentConfig, context: int, batch: int = 1) -> bool:
    """`check_devices_hold`'s verdict (its check: `check_capacity`, without the fix's search for
    device counts, which a refusal runs: seconds a context)."""
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    try:
        check_capacity(cfg.model, mp, cfg.device, context, batch, cfg.kv_tokens_cap, cfg.scheduler.kv_block_tokens)
    except CapacityError:
        return False
    return True


def test_a_context_the_bytes_hold_but_the_blocks_do_not_is_refused_before_start():
    cfg = apply_overrides(_cfg(TINY), ["model.max_seq_len=600"])
    room = kv_room(cfg, resolve_mapping(cfg.model, cfg.parallel, cfg.device))
    assert room.num_blocks == 37 and not room.fits(600)  # 38 blocks of 16 tokens
    with pytest.raises(ValueError, match="38 blocks of 16 tokens"):
        check_devices_hold(cfg)
    fits = apply_overrides(cfg, ["model.max_seq_len=592"])
    check_devices_hold(fits)  # what passes, the engine admits: its longest prompt, and one token more
    eng = Engine(fits)
    eng.add_request([5] * 591, RequestParams(max_tokens=1, ignore_eos=True))
    while eng.has_work():
        eng.step()
    assert [r.finish_reason for r in eng.requests.values()] == ["length"]


@pytest.mark.parametrize("model,devices,pp", [(TINY, 1, 1), (GEMMA2_LIKE, 1, 1), (GEMMA3_LIKE, 2, 2)])
def test_the_preflight_passes_exactly_what_the_scheduler_admits(model, devices, pp):
    """Context by context around where the KV runs out (a mixed device rounds up each kind's blocks,
    `kv_room.seq_blocks`), and at a batch of three: the preflight and the scheduler's room agree."""
    cfg = _cfg(model, devices, pp, rows=12 // pp)
    room = kv_room(cfg, resolve_mapping(cfg.model, cfg.parallel, cfg.device))
    longest = room.longest(1)
    contexts = range(max(1, longest - 40), longest + 40)
    for batch in (1, 3):
        got = [_preflight_passes(cfg, n, batch) for n in contexts]
        want = [room.fits(n, batch) for n in contexts]
        assert got == want, [n for n, g, w in zip(contexts, got, want) if g != w]
    check_devices_hold(cfg, longest)  # the command's check itself, at the edge
    with pytest.raises(ValueError, match=f"the largest context at batch 1 is {longest},"):
        check_devices_hold(cfg, longest + 1)


def test_the_override_caps_what_the_preflight_passes_as_it_caps_admission():
    """scheduler.num_kv_blocks_override=30 on a device of 37 blocks: a 592-token context (37 blocks)
    passed the preflight, and the engine then refused every prompt past 480 tokens. Checked where the
    engine's scheduler runs (check_runnable: cent serve, cent bench, cent sweep --trace)."""
    from cent_serve.preflight import check_runnable

    cfg = apply_overrides(_cfg(TINY), ["model.max_seq_len=592", "scheduler.num_kv_blocks_override=30"])
    with pytest.raises(ValueError) as err:
        check_runnable(cfg)
    assert str(err.value).endswith("needs 37 blocks of 16 tokens on a device, scheduler.num_kv_blocks_override=30 caps "
                                   "it at 30: raise it to 37 or more, or remove it, or a shorter context with --set "
                                   "model.max_seq_len=N (at most 480 tokens)"), str(err.value)  # a test of preemption's fix
    check_runnable(apply_overrides(cfg, ["scheduler.num_kv_blocks_override=37"]))  # as the fix says
    check_runnable(apply_overrides(cfg, ["model.max_seq_len=480"]))


def test_check_capacity_stops_at_the_first_device_that_does_not_hold(monkeypatch):
    """fewest_devices and devices_that_hold try count after count that does not hold: check_capacity
    counts the devices' blocks one by one and stops at the first refusal, as it did in bytes (counting
    every device of every refused count first made cent info --presets' searches 3.5x slower)."""
    from cent_serve.timing import mapping
    asked = []
    weight_bytes = mapping.device_weight_bytes
    monkeypatch.setattr(mapping, "device_weight_bytes", lambda m, mp, d, *a: asked.append(d) or weight_bytes(m, mp, d, *a))
    cfg = CentConfig(model=model_preset("llama2-70b"), parallel=ParallelConfig(14, 0, 1), numerics="off")  # 16 hold it
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    with pytest.raises(CapacityError, match=r"^device (\d+):") as err:
        check_capacity(cfg.model, mp, cfg.device, 4096, None, cfg.kv_tokens_cap, cfg.scheduler.kv_block_tokens)
    failing = int(str(err.value).split(":")[0].split()[1])
    devices = sorted({d for s in mp.stages for d in s.device_ids})
    assert failing < devices[-1]  # else this test could not tell
    assert set(asked) == {d for d in devices if d <= failing}, (failing, sorted(set(asked)))


def test_the_closed_form_which_does_not_read_the_override_is_not_refused_by_it(capsys, caplog):
    """cent simulate warned that scheduler.num_kv_blocks_override is not read by the closed form (it caps
    what the serving engine's scheduler admits), then refused the run for it: the closed form's batch, one
    query a lane at the whole context, never meets the scheduler. Serving's check (check_runnable's one
    sequence of the whole context, which the engine then admits alone) still refuses it."""
    from cent_serve.cli import main
    from cent_serve.preflight import check_runnable

    given = ["simulate", "--model", "tiny", "--numerics", "off", "--seqlen", "592", "--json"]
    assert main(given) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*given, "--set", "scheduler.num_kv_blocks_override=30"]) == 0
    out = capsys.readouterr()
    assert any("--set scheduler.num_kv_blocks_override: the closed form does not read it" in r.getMessage()
               for r in caplog.records)
    got = json.loads(out.out)
    assert got.pop("config")["scheduler"]["num_kv_blocks_override"] == 30
    plain.pop("config")
    assert got == plain  # the same figures, as the warning says
    cfg = apply_overrides(_cfg(TINY), ["model.max_seq_len=592", "scheduler.num_kv_blocks_override=30"])
    check_devices_hold(cfg)  # the devices hold it: the override is no device's
    with pytest.raises(ValueError, match="scheduler.num_kv_blocks_override=30 caps it at 30"):
        check_runnable(cfg)
