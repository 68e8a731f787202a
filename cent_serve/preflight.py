"""Checks that refuse what cannot run before anything starts (no Ray, no weights, no server).

Every command that would build devices (`cent serve`, `cent bench run`, `cent simulate`,
`cent info`) calls these, so a mapping that cannot hold the model, full numerics that cannot
fit the machine's memory, or a port another process holds are refused with one message, the
same everywhere, naming the size, what is available and the fix. Each raises ValueError.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import os
import socket
from pathlib import Path

from cent_serve.config import MAX_DEVICES, CentConfig, ParallelConfig
from cent_serve.config.fields import size_text
from cent_serve.config.model import rope_numerics_refusal
from cent_serve.timing.mapping import (CAPACITY_FIELDS, CapacityError, Mapping, check_capacity, counted, kv_room,
                                      resolve_mapping)

GIB = 2**30
F32_BYTES = 4
"""Full numerics computes on float32 copies of the weights (`cent_serve.model.weights`)."""


def check_devices_hold(cfg: CentConfig, context: int | None = None, batch: int | None = 1,
                       batch_flag: bool = False, context_flag: str | None = None) -> Mapping:
    """The mapping, after checking that every device holds its weight shard plus the KV cache
    of `batch` sequences of `context` tokens (default: one sequence of the whole context, so
    that every request the API accepts can run; None: one a pipeline stage, the paper's batch, as
    many as its stages for each mapping the fix tries). Raises ValueError naming the device, the sizes
    and the fix (with `batch_flag`, the command's --batch among them; with `context_flag`, the flag
    that set the context, e.g. --seqlen, rather than model.max_seq_len)."""
    mp = resolve_mapping(cfg.model, cfg.parallel, cfg.device)
    context = cfg.model.max_seq_len if context is None else context
    try:
        check_capacity(cfg.model, mp, cfg.device, context, batch, cfg.kv_tokens_cap, cfg.scheduler.kv_block_tokens)
    except CapacityError as exc:
        n = devices_that_hold(cfg, context, batch)  # None: more devices only add copies
        shorter = context_flag or "--set model.max_seq_len=N"
        lanes = "" if n is None else _lanes(cfg, n)
        held = _held_beside_weights(context, batch)
        if exc.max_batch is not None:  # the weights fit: fewer sequences, more devices or less context
            ways = [f"--batch {exc.max_batch}"] if batch_flag and exc.max_batch else []
            if n is not None:
                ways.append(f"{n} devices (the fewest that hold it{held}){lanes}")
            elif (par := _more_stages_or_tp(cfg, context, batch)) is not None:  # more only copy
                ways.append(_stages_or_tp_text(cfg, par))
            if (small := _smaller_devices(cfg)) is not None:
                ways.append(small)
            ways.append(f"a shorter context with {shorter}")
            fix = "; or use " + ", ".join(ways[:-1] + [("or " if len(ways) > 1 else "") + ways[-1]])
            why = f"{exc}{fix}"
        else:  # the weights alone do not fit: how many devices hold them, or what changes the shard
            why = f"{exc}: {_weights_fix(cfg, n, lanes + held, context, batch, shorter)}"
        raise ValueError(f"{cfg.model.name} on {counted(cfg.parallel.num_devices, 'device')} ({mp.describe()}) does not "
                         f"fit: {why}") from None
    return mp


def _check_override(cfg: CentConfig, mp: Mapping, context: int, batch: int) -> None:
    """`scheduler.num_kv_blocks_override` caps the blocks the scheduler admits against on every device
    (`KVRoom.capped`): ValueError when it leaves too few for `batch` sequences of `context` tokens,
    which the devices themselves hold (`check_capacity` passed), so raising or removing it is the fix.
    `check_runnable`'s alone: the closed form and `paper.emulate` never meet the scheduler (cent simulate
    warns the override is not read, and must not then refuse for it)."""
    override = cfg.scheduler.num_kv_blocks_override
    if override is None:
        return
    block = cfg.scheduler.kv_block_tokens
    room = kv_room(cfg.model, mp, cfg.device, block, cfg.kv_tokens_cap)
    capped = room.capped(override)
    need, have = capped.tightest(context, batch)
    if need > have:
        enough = batch * max(room.need(context))  # every kind of device's count fits under it
        longest = capped.longest(batch)  # a test of preemption keeps the override and shortens the context
        shorter = f", or a shorter context with --set model.max_seq_len=N (at most {longest} tokens)" if longest else ""
        raise ValueError(f"{cfg.model.name} on {counted(cfg.parallel.num_devices, 'device')} ({mp.describe()}) does not "
                         f"fit: the KV of {batch} x {context} tokens needs {need} blocks of {block} tokens on a device, "
                         f"scheduler.num_kv_blocks_override={override} caps it at {have}: raise it to {enough} or more, "
                         f"or remove it{shorter}")


def _smaller_devices(cfg: CentConfig) -> str | None:
    """The fix a device made smaller than the default by its fields (a `--set` of a researcher's)
    adds to a KV cache that does not fit: larger devices, naming what sets the size; None at the
    default size or above (serving users are not told to change the hardware)."""
    from cent_serve.config import DeviceConfig

    have, default = cfg.device.capacity_bytes, DeviceConfig().capacity_bytes
    if have >= default:
        return None
    return (f"larger devices ({CAPACITY_FIELDS} make one {size_text(have)} here, {size_text(default)} by "
            "default)")


def _weights_fix(cfg: CentConfig, n: int | None, lanes: str, context: int, batch: int | None,
                 shorter: str) -> str:
    """The fix for weights a device cannot hold: the fewest devices that hold them with the user's
    pp and tp settings (`n`, from `devices_that_hold`: only with one stage a block, where a larger
    tp would need --pp set and twice the layers in devices), or, when no count does (more devices
    only add copies), the mapping with more stages or a larger tp that holds them (`_more_stages_or_tp`: on the
    devices given when a copy there leaves some idle, else on more); when none holds the KV cache too,
    the one that holds the weights with a shorter context (`shorter`, the flag that sets it: the
    batch's sequences at one token). Larger devices close every fix."""
    larger = f"larger devices: {CAPACITY_FIELDS}"
    if n is not None:
        return f"use {n} devices (the fewest that hold it{lanes}), or {larger}"
    pp = f"--pp {cfg.parallel.pp}" if cfg.parallel.pp else "one stage a block"
    given = f"no count of devices up to {MAX_DEVICES:,} holds it with {pp} and --tp {cfg.parallel.tp}"
    par = _more_stages_or_tp(cfg, context, batch)
    if par is not None:
        return f"{given}: use {_stages_or_tp_text(cfg, par)}, or {larger}"
    par = _more_stages_or_tp(cfg, 1, batch)  # the weights, and the least KV a sequence has
    if par is None:
        return f"{given}, nor with more stages or a larger tp: use {larger}"
    return (f"{given}, nor with more stages or a larger tp; with a shorter context ({shorter}), use "
            f"{_stages_or_tp_text(cfg, par, 'the weights')}, or {larger}")


def _stages_or_tp_text(cfg: CentConfig, par: ParallelConfig, what: str = "it") -> str:
    """`_more_stages_or_tp`'s mapping for a fix: its pp and tp alone when a copy fits the devices
    given (the rest run copies), else the devices it takes too, and the switch lanes they need."""
    fewest = f"the fewest that hold {what} with more stages or a larger tp"
    if par.num_devices <= cfg.parallel.num_devices:
        return (f"--pp {par.pp} --tp {par.tp} (a copy on {par.num_devices} of your {cfg.parallel.num_devices} "
                f"devices, {fewest})")
    return f"{par.num_devices} devices with --pp {par.pp} --tp {par.tp} ({fewest}){_lanes(cfg, par.num_devices)}"


def _held_beside_weights(context: int, batch: int | None) -> str:
    """What a fix's "the fewest that hold it" holds besides the weights, when it is not the one
    sequence of `cent serve` and `cent info`: `cent simulate` checks a query a stage (the paper's
    batch), so its count (16 for llama2-70b) was read as the weights' and contradicted info's (9)."""
    if batch == 1:
        return ""
    if batch is None:
        return f" with a {context:,}-token query a stage"
    return f" with {batch} queries of {context:,} tokens"


def _lanes(cfg: CentConfig, n: int) -> str:
    """The clause a fix naming `n` devices adds when they are more than the switch's lanes."""
    return f" with --set fabric.switch_lanes={n}" if n > cfg.fabric.switch_lanes else ""


def _more_stages_or_tp(cfg: CentConfig, context: int, batch: int | None) -> ParallelConfig | None:
    """The fewest devices, with their pp and tp, that hold the weights and the KV cache of `batch`
    sequences (None: one a stage) of `context` tokens with more stages than the user's pp (the
    same tp) or a larger tp dividing the heads (the same pp), each on pp x tp devices; at a tie, more
    stages. None if none up to `MAX_DEVICES` does. For weights, or a KV cache, no count of devices
    holds with the user's pp and tp (more devices only add copies); a larger tp splits each block's
    weights and KV over more devices, more stages a copy's blocks. A copy takes pp x tp devices: more
    than the devices given when the user's copy takes them all, and maybe fewer when it leaves some
    idle (then the rest run copies). At most the layers plus the heads' divisors mappings (a few ms each)."""
    m, par = cfg.model, cfg.parallel
    pp = par.pp or m.num_layers
    more_stages = [(s * par.tp, s, par.tp) for s in range(pp + 1, m.num_layers + 1)]
    larger_tp = [(pp * t, pp, t) for t in range(par.tp + 1, m.num_heads + 1) if m.num_heads % t == 0]
    return _first_that_holds(cfg, context, batch,
                             (dataclasses.replace(par, num_devices=n, pp=s, tp=t)
                              for n, s, t in sorted(more_stages + larger_tp, key=lambda c: (c[0], c[2]))
                              if n <= MAX_DEVICES))


def devices_that_hold(cfg: CentConfig, context: int, batch: int | None) -> int | None:
    """The fewest devices, more than `cfg.parallel.num_devices`, whose mapping (the same pp and tp
    settings) holds the weights and the KV cache of `batch` sequences (None: one a stage) of
    `context` tokens; None if none up to `MAX_DEVICES` does (a few ms a count). The switch is not asked:
    a count past `fabric.switch_lanes` needs it raised, which the caller says. Unlike
    `fewest_devices` (the presets table's pure pipeline), the mapping is the user's."""
    start = cfg.parallel.num_devices + 1
    par = _first_that_holds(cfg, context, batch,
                            (dataclasses.replace(cfg.parallel, num_devices=n) for n in range(start, MAX_DEVICES + 1)))
    return None if par is None else par.num_devices


def _first_that_holds(cfg: CentConfig, context: int, batch: int | None, parallels) -> ParallelConfig | None:
    """The first of `parallels` whose mapping of `cfg.model` on `cfg.device` holds the weights and the KV
    cache of `batch` sequences of `context` tokens, in the scheduler's blocks (`check_capacity`), or None."""
    m, dev = cfg.model, cfg.device
    for par in parallels:
        try:
            check_capacity(m, resolve_mapping(m, par, dev), dev, context, batch, cfg.kv_tokens_cap,
                           cfg.scheduler.kv_block_tokens)
        except ValueError:  # CapacityError among them: it does not hold it, or cannot map it
            continue
        return par
    return None


def full_numerics_host_bytes(cfg: CentConfig, mp: Mapping) -> int:
    """Host memory full numerics needs at its peak: the in-process executor keeps the model
    (to re-create a failed replica) and the devices' shards, two float32 copies; on Ray every
    device actor reads the whole model while it slices its shard, all at once at start-up."""
    model_bytes = cfg.model.param_count() * F32_BYTES
    if cfg.executor == "local" or cfg.on_gpus:  # modelled GPUs: one load of the model, in this process
        return 2 * model_bytes
    return (mp.devices_used + 1) * model_bytes


def available_memory_bytes() -> int | None:
    """What this machine (or its container's memory limit) can still give, or None if unknown."""
    have = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # cgroup v2: a container's limit may be far below the machine's memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = int(limit) - used
            have = room if have is None else min(have, room)
    except (OSError, ValueError):
        pass
    return have


def check_host_memory(cfg: CentConfig, mp: Mapping, available_bytes: int | None = None) -> None:
    """Refuse full numerics whose weights cannot fit the machine's available memory (the kernel
    would kill the process minutes later, silently). Nothing to check with numerics off, or
    when the devices run on a cluster's other machines (`server.ray_address`)."""
    if cfg.resolved_numerics != "full" or (cfg.executor == "ray" and cfg.server.ray_address):
        return
    have = available_memory_bytes() if available_bytes is None else available_bytes
    need = full_numerics_host_bytes(cfg, mp)
    if have is not None and need > have:
        copies = need // (cfg.model.param_count() * F32_BYTES)
        why = ("the model and its shards" if cfg.executor == "local" or cfg.on_gpus else  # full_numerics_host_bytes'
               f"each of the {copies - 1} device actor{'s' if copies > 2 else ''} reads the whole model at start-up, "
               "beside this process's")
        raise ValueError(f"full numerics of {cfg.model.name} ({cfg.model.param_count() / 1e9:.2f} B parameters) "
                         f"needs about {need / GIB:.1f} GiB of memory here, {copies} float32 copies ({why}; "
                         f"{cfg.executor} executor); this "
                         f"machine has {have / GIB:.1f} GiB available: use --numerics off (timing only, the same "
                         "simulated times)")


def check_reference_fits(cfg: CentConfig, available_bytes: int | None = None) -> None:
    """`cent generate`: the reference model builds every weight as float32 in this one process;
    refuse a model this machine cannot hold before building any of it."""
    have = available_memory_bytes() if available_bytes is None else available_bytes
    need = cfg.model.param_count() * F32_BYTES
    if have is not None and need > have:
        raise ValueError(f"cent generate builds {cfg.model.name}'s {cfg.model.param_count() / 1e9:.2f} B parameters "
                         f"as float32 ({need / GIB:.1f} GiB); this machine has {have / GIB:.1f} GiB available: "
                         "generate with a smaller model (e.g. --model tiny), or time this one with cent simulate or "
                         "cent serve --numerics off")


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port as uvicorn binds (address reuse: TIME_WAIT is fine); port 0
    takes a free one. ValueError naming `server.host` / `server.port` and the fix when it cannot be."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    if os.name != "nt":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        s.close()
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"server.port={port} is in use on {host}: stop the other server or pick another "
                             "port with --port N") from None
        raise ValueError(f"server.host={host!r}, server.port={port} cannot be bound ({exc.strerror}): use an "
                         "address of this machine (default 127.0.0.1) and a port you may open") from None
    return s


def start_listening(sock: socket.socket, host: str, port: int, backlog: int = 2048) -> None:
    """`sock.listen`, the port given for the error: another server told the same port may have bound
    it too meanwhile (address reuse lets two bind while neither listens) and listened first."""
    try:
        sock.listen(backlog)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ValueError(f"server.port={port} is in use on {host}: another server took it while this one "
                         "started; stop the other server or pick another port with --port N") from None


def check_runnable(cfg: CentConfig, context: int | None = None, batch: int | None = 1, *,
                   gpu_flag: str | None = None) -> Mapping:
    """Everything that can be known before starting: the devices hold the model and the KV of
    `batch` sequences of `context` tokens (None: one a pipeline stage, `check_devices_hold`), full
    numerics fits this machine, computes the model's rotary embedding, and its checkpoint holds every
    tensor in its shape. Returns the
    mapping (GPUs: their `GpuMapping`, after checking the weights and `batch` sequences of the whole
    context fit; a batch of None, one a stage, is CENT's alone: `paper.emulate` refuses GPUs).
    `gpu_flag`: how the command names the GPUs in the fixes it gives (default `gpu.timing.HARDWARE_FLAG`)."""
    if cfg.resolved_numerics == "full" and (why := rope_numerics_refusal(cfg.model)):
        raise ValueError(why)
    if cfg.on_gpus:
        mp = check_gpus_hold(cfg, context, batch, gpu_flag)
        check_checkpoint(cfg)  # before the memory: a config.json alone is "no weights", not "too big"
        check_host_memory(cfg, mp)
        check_tokenizer(cfg)
        return mp
    mp = check_devices_hold(cfg, context, batch)
    if batch is not None:  # the engine's scheduler admits them (None: `paper.emulate`, which has none)
        _check_override(cfg, mp, cfg.model.max_seq_len if context is None else context, batch)
    if cfg.resolved_numerics == "full":  # the numerics split each block's heads over a stage's devices
        from cent_serve.sharding import check_tp
        check_tp(cfg.model, mp.tp)
    check_checkpoint(cfg)
    check_host_memory(cfg, mp)
    check_tokenizer(cfg)
    return mp


def check_tokenizer(cfg: CentConfig) -> None:
    """A checkpoint's tokenizer files load (tokenizer.json, tokenizer_config.json and its chat
    template, special_tokens_map.json): ValueError naming the file otherwise, before anything starts
    (`cent serve` on Ray met a damaged tokenizer.json after its devices, ~25 s in)."""
    ckpt = cfg.model.checkpoint
    if ckpt and (Path(ckpt) / "tokenizer.json").is_file():
        files = tuple((st.st_mtime_ns, st.st_size) for name in ("tokenizer.json", "tokenizer_config.json",
                                                                     "special_tokens_map.json", "chat_template.jinja")
                      if (st := _stat(Path(ckpt) / name)) is not None)
        _tokenizer_loads(ckpt, files, cfg.model.bos_token_id, cfg.model.eos_token_id)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


@functools.lru_cache(maxsize=16)
def _tokenizer_loads(ckpt: str, files: tuple, bos_token_id: int, eos_token_id: int) -> None:
    """Load a checkpoint's tokenizer once per version of its files (a sweep checks every point)."""
    from cent_serve.model.tokenizer import HFTokenizer
    HFTokenizer(Path(ckpt) / "tokenizer.json", bos_token_id, eos_token_id)


def check_checkpoint(cfg: CentConfig) -> None:
    """With full numerics, a checkpoint's files hold every tensor its config.json asks for, in its
    shape (read from the files' headers, no weights): on Ray each device actor loads the weights, so
    a bad tensor would otherwise surface after start-up, wrapped in Ray's traceback."""
    if cfg.resolved_numerics == "full" and cfg.model.checkpoint:
        from cent_serve.model.hf_checkpoint import check_hf_checkpoint
        check_hf_checkpoint(cfg.model)


def check_gpus_hold(cfg: CentConfig, context: int | None = None, batch: int = 1, gpu_flag: str | None = None,
                    context_flag: str | None = None, batch_flag: str | None = None):
    """The GPUs hold the weights and the KV of `batch` sequences of `context` tokens (default one
    of the whole context). ValueError naming the sizes and the fix, the GPUs named by `gpu_flag`
    (default `gpu.timing.HARDWARE_FLAG`), the context by `context_flag` (default model.max_seq_len),
    with the longest context that fits; `batch_flag`: the flag that sets the batch (cent simulate's
    --batch), named with the most sequences that fit; None where the batch is no user's to change
    (one sequence of the whole context, what serving needs)."""
    from cent_serve.gpu.timing import HARDWARE_FLAG, GpuTimer

    gpu_flag = HARDWARE_FLAG if gpu_flag is None else gpu_flag
    t = GpuTimer(cfg, gpu_flag)
    t.check_fits()
    context = cfg.model.max_seq_len if context is None else context
    block = cfg.scheduler.kv_block_tokens
    override = cfg.scheduler.num_kv_blocks_override
    room = t.kv_room(block)
    kv = room.capped(override)  # as the engine counts them: on the stage the sequences fill the most
    need, have = kv.tightest(context, batch)
    fits = kv.most_sequences(context)  # sequences of this context the blocks hold
    fewer = [f"{batch_flag} {fits} (the most of {context} tokens that fit)"] if batch_flag and fits else []
    if have < need and override is not None and override < need:  # the override caps them: more GPUs do not help
        held = room.rows[kv.tightest_row(context)].blocks  # that stage's own count
        held_seqs = room.most_sequences(context)  # without the override: a smaller batch is a fix too
        fix = (f"raise it to {need} or more, or remove it" if room.fits(context, batch) else
               f"raise or remove it and use more GPUs ({gpu_flag}KIND:N)" + (
                   f" or {batch_flag} {held_seqs} (the most of {context} tokens the GPUs hold)"
                   if batch_flag and held_seqs else ""))
        why = (f"scheduler.num_kv_blocks_override={override} caps the GPUs at {have} (they hold {held})"
               if override < held else f"the GPUs hold {held} (scheduler.num_kv_blocks_override={override} would cap "
               "more of them)")
        raise ValueError(f"{cfg.model.name} on {t.mapping.describe()} does not fit: the KV of {batch} x {context} "
                         f"tokens needs {need} blocks of {block} tokens, {why}: {', or use '.join([fix, *fewer])}, or "
                         f"a shorter context with {context_flag or '--set model.max_seq_len=N'}")
    if have < need:
        # the N that fits (vLLM's refusal names the KV cache's tokens likewise): a long-context model's
        # config.json (Mistral-Nemo's 1,024,000) on few GPUs needs it
        largest = kv.longest(batch) or 0
        ways = [f"more GPUs ({gpu_flag}KIND:N)", *fewer, "a larger --set gpu.memory_utilization=F"]
        if largest:  # else more sequences than blocks (a sequence takes one at least): no shorter context fits
            ways.append(f"a shorter context with {context_flag or '--set model.max_seq_len=N'} (at most {largest} "
                        f"tokens at {batch} sequence{'s' if batch > 1 else ''})")
        raise ValueError(f"{cfg.model.name} on {t.mapping.describe()} does not fit: the KV of {batch} x {context} "
                         f"tokens needs {need} blocks of {block} tokens, the GPUs hold {have} after the weights in "
                         f"gpu.memory_utilization={cfg.gpu.memory_utilization} of their memory: use "
                         f"{', '.join(ways[:-1])}, or {ways[-1]}")
    return t.mapping


def fewest_devices(cfg: CentConfig, context: int, batch: int | None = None, most: int = 1024) -> int | None:
    """The fewest devices on which `cfg.model` runs in pure pipeline (the paper's mapping: one block a
    stage) holding the weights and the KV cache of `batch` queries of `context` tokens (default: one
    per stage, the paper's batch), a windowed block keeping `CentConfig.kv_tokens_cap` of each (the
    scheduler's figure); None when more than `most` would be needed."""
    m, dev = cfg.model, cfg.device

    def counts():
        n = -(-m.num_layers // dev.num_channels)  # fewer cannot place the blocks
        while n <= most:
            yield ParallelConfig(n, m.num_layers, 1)
            n += 1 if n < 64 else n // 16  # coarser steps beyond 64 devices

    par = _first_that_holds(cfg, context, batch, counts())
    return None if par is None else par.num_devices
