"""A model that windows some blocks only (Gemma 2, Gemma 3, Qwen's mixes) keeps a sequence's whole
KV in its full-attention blocks and its window in the others (vLLM's hybrid KV cache manager), so
admission lets in more sequences than when every block kept them all; where devices (or GPU stages)
hold different mixes of blocks, the tightest one for the sequences decides. Figures by hand from
the bytes a block keeps of a token."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from cent_serve.config import CentConfig, ParallelConfig, model_preset
from cent_serve.engine import Engine
from cent_serve.kv_room import KVRoom, Row
from cent_serve.request import RequestParams, RequestRefused
from cent_serve.scheduler import Scheduler, kv_room
from cent_serve.timing.mapping import device_weight_bytes, resolve_mapping

S, F = "sliding_attention", "full_attention"
TINY = model_preset("tiny")
BLOCK_TOKEN_BYTES = 2 * 2 * 32 * 2
"""What one block keeps of a token: K and V of tiny's 2 KV heads of 32, bf16."""
GEMMA2_LIKE = dataclasses.replace(TINY, sliding_window=16, layer_types=(S, F) * 4, model_type="gemma2")
GEMMA3_LIKE = dataclasses.replace(TINY, sliding_window=16, layer_types=(S,) * 5 + (F,) + (S,) * 2,
                                  model_type="gemma3_text")
CAP_BLOCKS = 3
"""A windowed block keeps 16 + 1 + 16 = 33 tokens of a sequence (window, a step, a block): 3 blocks."""
PROMPT = [5] * 159  # admitted with its first token: 160 tokens, 10 blocks of keys


def _cfg(model, devices: int = 1, pp: int = 1) -> CentConfig:
    cfg = CentConfig(model=model, parallel=ParallelConfig(devices, pp, 1), numerics="off")
    # 12 MiB devices holding all of tiny, 6 MiB holding half: room for a few dozen KV blocks after the weights
    cfg.device.rows_per_bank = 12 // pp
    cfg.scheduler.max_seqs_per_stage = 64  # the KV, not the lanes, decides
    return cfg


def _room_bytes(cfg: CentConfig, device: int) -> int:
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    return cfg.device.capacity_bytes - device_weight_bytes(cfg.model, mp, device)


def _admitted(eng: Engine, n: int = 64) -> int:
    for _ in range(n):
        eng.add_request(PROMPT, RequestParams(max_tokens=24, ignore_eos=True))
    eng.step()
    return eng.scheduler.num_running


def _run_checking_devices(eng: Engine) -> None:
    """To the end: every request ends by its length (no round fails for KV), and no device holds
    more blocks than the scheduler reserved on its row (after a round where none finished: a finished
    sequence's blocks are free in the scheduler at once, on the devices with the next plan)."""
    workers = list(eng.executors[0].workers.values())
    while eng.has_work():
        done = sum(r.finish_reason is not None for r in eng.requests.values())
        eng.step()
        if sum(r.finish_reason is not None for r in eng.requests.values()) > done:
            continue
        for w in workers:
            row = eng.scheduler.kv.rows.index(next(r for r in eng.scheduler.kv.rows if _is_row(w, r)))
            used = w.kv.num_blocks - w.kv.num_free_blocks
            assert used <= eng.scheduler.kv.rows[row].blocks - eng.scheduler._free[0][row], (w.device_id, used)
    assert all(r.finish_reason == "length" for r in eng.requests.values())


def _is_row(worker, row: Row) -> bool:
    full, windowed, _ = worker.kv_kinds
    return (row.full == 0) == (full == 0)


def test_alternate_windows_admit_more_sequences_than_every_block_keeping_all():
    cfg = _cfg(GEMMA2_LIKE)
    blocks = _room_bytes(cfg, 0) // (16 * 8 * BLOCK_TOKEN_BYTES)  # a KV block: 16 tokens of the device's 8 blocks
    # 4 full-attention blocks keep 10 blocks of keys, 4 windowed ones 3: (40 + 12) / 8, rounded up
    need = -(-(4 * 10 + 4 * CAP_BLOCKS) // 8)
    assert need == 7 and blocks // need > blocks // 10 > 0
    eng = Engine(cfg)
    assert eng.scheduler.blocks_for(160) == need and eng.scheduler.kv_blocks == blocks
    assert _admitted(eng) == blocks // need
    _run_checking_devices(eng)


def test_stages_of_different_mixes_the_tightest_decides():
    cfg = _cfg(GEMMA3_LIKE, devices=2, pp=2)  # device 0: blocks 0-3, all windowed; device 1: 4-7, one of them full
    blocks = [_room_bytes(cfg, d) // (16 * 4 * BLOCK_TOKEN_BYTES) for d in (0, 1)]
    need = [CAP_BLOCKS, -(-(1 * 10 + 3 * CAP_BLOCKS) // 4)]  # (3, 5)
    assert kv_room(cfg, resolve_mapping(cfg.model, cfg.parallel, cfg.device)).rows == \
        (Row(1, 3, blocks[1]), Row(0, 1, blocks[0]))
    assert blocks[1] // need[1] < blocks[0] // need[0]  # device 1 is the tightest for these sequences
    eng = Engine(cfg)
    assert _admitted(eng) == blocks[1] // need[1] > min(blocks) // 10  # every block keeping all: 10 each
    _run_checking_devices(eng)


def test_a_refusal_quotes_the_tightest_devices_blocks():
    cfg = _cfg(GEMMA3_LIKE, devices=2, pp=2)
    cfg.scheduler.num_kv_blocks_override = 4
    eng = Engine(cfg)
    eng.add_request([5] * 99, RequestParams(max_tokens=1))  # 100 tokens: 7 blocks of keys, (7 + 9) / 4 = 4 on device 1
    with pytest.raises(RequestRefused) as err:
        eng.add_request(PROMPT, RequestParams(max_tokens=1))  # 160: 5 on device 1, 3 on device 0
    assert ("the prompt (159 tokens) needs 5 KV blocks of 16 tokens (scheduler.kv_block_tokens) on a device of its "
            "replica (a windowed block keeps 33 of its tokens, a full-attention one all); that device holds 4, capped "
            "by scheduler.num_kv_blocks_override=4") in str(err.value)


def test_gpu_stages_admit_by_the_tightest_stage():
    from cent_serve.gpu.timing import GpuTimer
    from cent_serve.preflight import check_gpus_hold

    cfg = CentConfig(model=GEMMA3_LIKE, numerics="off")
    cfg.gpu.count, cfg.gpu.pp, cfg.gpu.memory_utilization, cfg.gpu.max_num_batched_tokens = 2, 2, 8e-5, 16
    t = GpuTimer(cfg)
    # 80 GB x 8e-5 = 6.4 MB a GPU, less its stage's weights, in tokens of its 4 layers, in blocks of 16
    blocks = [int((80e9 * 8e-5 - t.stage_weight_bytes(s)) // (4 * BLOCK_TOKEN_BYTES)) // 16 for s in (0, 1)]
    assert blocks == [44, 44]  # a window of 16 + a step's 16 + a block of 16 = 48 tokens: 3 blocks
    assert t.kv_room(16).rows == (Row(1, 3, 44), Row(0, 1, 44))
    s = Scheduler(1, 1, 64, t.kv_room(16), 16, 64)
    for i in range(20):
        s.add(_request(i))
    s.schedule(0.0)
    assert s.num_running == 44 // 5 == 8  # stage 1's (10 + 3 x 3) / 4 = 5 blocks a sequence; every layer's KV: 4
    assert Engine(cfg).scheduler.kv.rows == t.kv_room(16).rows  # what the engine admits against
    check_gpus_hold(cfg, 160, 8)
    with pytest.raises(ValueError, match=r"the KV of 9 x 160 tokens needs 45 blocks of 16 tokens, the GPUs hold 44 "
                                         r".* --batch 8 \(the most of 160 tokens that fit\)"):
        check_gpus_hold(cfg, 160, 9, batch_flag="--batch")


def _request(i: int):
    from cent_serve.request import Request
    return Request(f"r{i}", PROMPT, RequestParams(max_tokens=4), 0.0, np.random.default_rng(i))


def test_fewest_devices_of_a_mixed_model_count_the_window_on_its_windowed_blocks():
    from cent_serve.preflight import fewest_devices

    m = model_preset("gemma-3-27b")
    cfg = CentConfig(model=m)
    every_full = CentConfig(model=dataclasses.replace(m, layer_types=(F,) * m.num_layers))
    n = fewest_devices(cfg, m.max_seq_len, batch=1)
    assert (n, fewest_devices(every_full, m.max_seq_len, batch=1)) == (5, 9)  # 9: the old rule's
    cap = m.sliding_window + 1 + 16  # the scheduler's defaults: a token a step, blocks of 16
    per_token = 2 * m.num_kv_heads * m.head_dim * 2  # one block's K and V of a token, bf16

    def holds(devices: int) -> bool:
        mp = resolve_mapping(m, ParallelConfig(devices, m.num_layers, 1), cfg.device)
        for d in range(devices):
            blocks = [b for s in mp.stages_on_device(d) for b in s.blocks]
            kv = sum(per_token * (min(m.max_seq_len, cap) if m.block_window(b) else m.max_seq_len) for b in blocks)
            if device_weight_bytes(m, mp, d) + kv > cfg.device.capacity_bytes:
                return False
        return True
    assert holds(n) and not holds(n - 1)


@pytest.mark.parametrize("model", [TINY, dataclasses.replace(TINY, sliding_window=16, model_type="mistral")])
def test_a_model_of_one_kind_of_block_keeps_one_pool(model):
    """No window, or a window on every block: one row, a sequence's ceil(min(n, cap) / 16) blocks."""
    cfg = _cfg(model, devices=2, pp=2)
    mp = resolve_mapping(model, cfg.parallel, cfg.device)
    blocks = min(_room_bytes(cfg, d) // (16 * 4 * BLOCK_TOKEN_BYTES) for d in (0, 1))
    windowed = bool(model.sliding_window)
    row = Row(0, 1, blocks) if windowed else Row(1, 0, blocks)
    assert kv_room(cfg, mp) == KVRoom(16, 33 if windowed else None, (row,))
    eng = Engine(cfg)
    assert eng.scheduler.blocks_for(160) == (CAP_BLOCKS if windowed else 10)
    assert _admitted(eng) == min(64, blocks // (CAP_BLOCKS if windowed else 10))


@pytest.mark.parametrize("model,devices,pp,tp", [(GEMMA2_LIKE, 1, 1, 1), (GEMMA3_LIKE, 1, 1, 1),
                                                 (GEMMA3_LIKE, 2, 2, 1), (GEMMA3_LIKE, 2, 1, 2)])
def test_each_device_holds_exactly_the_blocks_the_scheduler_counts_for_its_sequences(model, devices, pp, tp):
    """Sequence by sequence, a device's block table is as long as the scheduler's count of its row
    for the keys the sequence has (`KVRoom.need_blocks`): the reservation and the allocation are one rule."""
    cfg = _cfg(model, devices, pp)
    cfg.parallel = ParallelConfig(devices, pp, tp)
    cfg.scheduler.num_kv_blocks_override = 22  # a few sequences at once: some are preempted as they grow
    eng = Engine(cfg)
    ids = [eng.add_request(PROMPT, RequestParams(max_tokens=40, ignore_eos=True)).request_id for _ in range(6)]
    workers = [w for ex in eng.executors for w in ex.workers.values()]
    checked = 0
    while eng.has_work():
        eng.step()
        if eng.scheduler.num_preemptions and ids:  # and one aborted while it runs
            eng.abort(next(r for r in ids if eng.requests[r].finish_reason is None))
            ids = []
        for w in workers:
            full, windowed, _ = w.kv_kinds
            mix = KVRoom.of(16, eng.cfg.kv_tokens_cap, [(full, windowed, 0)]).rows[0]
            row = next(k for k, r in enumerate(eng.scheduler.kv.rows) if (r.full, r.windowed) == (mix.full, mix.windowed))
            for req in eng.scheduler.running:
                table = w.kv.block_tables.get(req.seq_id)
                if table is not None:
                    assert len(table) == eng.scheduler.kv.need_blocks(-(-req.num_computed // 16))[row], \
                        (w.device_id, req.num_computed)
                    checked += 1
    reasons = sorted(r.finish_reason for r in eng.requests.values())
    assert checked and eng.scheduler.num_preemptions and reasons == ["abort"] + ["length"] * 5, reasons
    eng.step()  # idle: the devices forget the last finished
    assert all(w.kv.num_free_blocks == w.kv.num_blocks for w in workers)  # every block back ...
    assert eng.scheduler.kv_usage() == 0.0 and eng.scheduler._free == [[r.blocks for r in eng.scheduler.kv.rows]]


def test_an_override_refusal_quotes_the_tightest_rows_devices_and_raises_it_when_that_suffices():
    """Rows of different sizes: the sequence fills the full-attention row most once the override caps
    both, but a smaller windowed row is the tightest of the devices' own counts. The refusal quoted
    that other row's blocks and, as they are fewer than the prompt needs, asked for more devices,
    though raising the override alone lets it in."""
    room = KVRoom(16, 48, (Row(1, 3, 100), Row(0, 1, 8)))  # a windowed block keeps 3 blocks of keys
    s = Scheduler(1, 1, 1, room, 16, 8, kv_blocks_override=5)
    with pytest.raises(RequestRefused) as err:
        s.check_fits(495)  # 31 blocks of keys: (31 + 3 x 3) / 4 = 10 on the first row, 3 on the second
    assert str(err.value).endswith("that device holds 5, capped by scheduler.num_kv_blocks_override=5 (its devices hold "
                                   "100): shorten the prompt, or raise scheduler.num_kv_blocks_override to 10 or more, "
                                   "or remove it"), str(err.value)
    Scheduler(1, 1, 1, room, 16, 8, kv_blocks_override=10).check_fits(495)  # as the fix says


def test_a_gpu_override_refusal_quotes_the_tightest_stages_own_blocks():
    """As the scheduler's refusal: stage 2 (a full-attention layer and a windowed one) is the
    tightest once the override caps every stage, the small all-windowed stages without it."""
    from cent_serve.gpu.timing import GpuTimer
    from cent_serve.preflight import check_gpus_hold

    cfg = CentConfig(model=dataclasses.replace(GEMMA3_LIKE, layer_types=(S,) * 6 + (F, S)), numerics="off")
    cfg.gpu.count, cfg.gpu.pp, cfg.gpu.memory_utilization, cfg.gpu.max_num_batched_tokens = 3, 3, 5.44e-5, 16
    cfg.scheduler.num_kv_blocks_override = 8
    rows = GpuTimer(cfg).kv_room(16).rows
    assert [(r.full, r.windowed) for r in rows] == [(1, 1), (0, 1)] and rows[1].blocks == 5 < 10 <= rows[0].blocks
    with pytest.raises(ValueError) as err:
        check_gpus_hold(cfg, 272)  # 17 blocks of keys: (17 + 3) / 2 = 10 on stage 2, 3 on the others
    assert (f"needs 10 blocks of 16 tokens, scheduler.num_kv_blocks_override=8 caps the GPUs at 8 (they hold "
            f"{rows[0].blocks}): raise it to 10 or more, or remove it") in str(err.value), str(err.value)
    cfg.scheduler.num_kv_blocks_override = 10
    check_gpus_hold(cfg, 272)


@pytest.mark.parametrize("hardware", [["--devices", "2"], ["--hardware", "gpu:a100-80gb:1"]])
def test_cli_info_names_the_window_only_for_a_model_that_mixes_both_kinds(capsys, hardware):
    """A model windowing every block kept its old line (a sequence's KV was capped before this rule);
    one windowing some blocks only says what a windowed block keeps."""
    from cent_serve.cli import main

    assert main(["info", "--model", "mistral-7b", *hardware]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "KV room" in x)
    assert "windowed" not in line and line.endswith(" a replica; numerics=off" if "--hardware" in hardware
                                                    else " blocks of 16); numerics=off"), line
    assert main(["info", "--model", "gemma-3-4b", *hardware]) == 0
    said = "a windowed layer keeps 3,088" if "--hardware" in hardware else "a windowed block keeps 1,041"
    assert f"{said} tokens of a sequence: " in capsys.readouterr().out


@pytest.mark.parametrize("hardware, kind", [(["--devices", "16"], "block"), (["--hardware", "gpu:a100-80gb:2"], "layer")])
def test_cli_info_says_its_kv_room_counts_each_token_in_every_block(capsys, hardware, kind):
    """cent info --model gemma-3-27b --devices 16 said 'KV room 337,440 tokens a replica' beside '12 of the
    whole context fit': 12 sequences of 131,072 tokens, 1.5M tokens, where a window on 52 of its 62 blocks
    keeps 1,041 a sequence. The figure counts each token in every block, and now says so; a model with no
    window keeps its line (tests/test_config.py)."""
    import json

    from cent_serve.cli import main

    assert main(["info", "--model", "gemma-3-27b", *hardware]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "KV room" in x)
    fit = re.search(r"KV room ([\d,]+) tokens of every (\w+)'s KV a replica .* ([\d,]+) of the whole context fit",
                    line)
    assert fit and fit[2] == kind and "tokens a replica" not in line, line
    tokens, sequences = (int(fit[k].replace(",", "")) for k in (1, 3))
    assert sequences * model_preset("gemma-3-27b").max_seq_len > tokens  # more of the sequences' tokens than it
    if kind == "block":
        assert main(["info", "--model", "gemma-3-27b", *hardware, "--json"]) == 0
        room = json.loads(capsys.readouterr().out)["kv_room"]
        assert tokens == room["tokens"] == 16 * room["blocks"]


def test_a_sequences_count_on_a_mixed_device_is_its_bytes_rounded_up_and_one_block_more_at_most():
    """`seq_blocks` against the bytes a sequence's keys take (full blocks all n tokens, windowed ones
    min(n, cap)), in blocks of 16 tokens of every block: never short, at most one block over their
    round-up; not "less than one block" over the bytes themselves (33 tokens, a cap of 17: 3 vs 1.56)."""
    from fractions import Fraction

    from cent_serve.kv_room import seq_blocks

    worst = 0
    for full, windowed in [(1, 1), (1, 3), (1, 5), (2, 7)]:
        for cap in (1, 16, 17, 33, 48, 100):
            for n in range(1, 300):
                exact = Fraction(full * n + windowed * min(n, cap), 16 * (full + windowed))
                count = seq_blocks(-(-n // 16), full, windowed, -(-cap // 16))
                assert -(-exact.numerator // exact.denominator) <= count <= -(-exact.numerator // exact.denominator) + 1
                worst = max(worst, count - exact)
    assert seq_blocks(3, 1, 1, 2) == 3 and 1 < worst < 2


def test_kv_usage_is_the_fullest_kind_of_devices_share_as_docs_serving_says():
    """vllm:kv_cache_usage_perc and the status's kv_usage (docs/serving.md): blocks in use over all
    replicas, of the kind of device the sequences fill the most, not of the smallest one's count."""
    room = KVRoom(16, 48, (Row(1, 3, 100), Row(0, 1, 8)))  # 160 tokens: 5 blocks on the first, 3 on the second
    s = Scheduler(2, 1, 4, room, 160, 8)
    for i in range(2):
        s.add(_request(i))
    s.schedule(0.0)
    assert s.num_running == 2 and s.kv_blocks == 8  # on either replica: the share is over both
    assert s.kv_usage() == max(2 * 5 / 200, 2 * 3 / 16) == 3 / 8
