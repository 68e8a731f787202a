"""Per-format trace readers: stream `Request`s from a file, arrivals measured from its first row.

Called by `cent_serve.bench.traces.load_trace`, which applies the replay options; a reader keeps
the file's own values (lengths may be 0) and only refuses what it cannot read. Every refusal is
a ValueError naming the file, the line (ShareGPT: the entry), the column, the value and the fix
(`ParamError` where the fix is a parameter, e.g. the format). A file with no request at all is
refused when the reader reaches its end. Arrivals must not decrease down the file:
inter-arrival scaling and start offsets assume order. Every format is read as UTF-8 with or
without a byte-order mark (`utf-8-sig`: editors on Windows write one), gzip'd or not (`open_text`:
known by the gzip magic bytes, whatever the suffix).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cent_serve.bench.errors import ParamError
from cent_serve.bench.request import Request

log = logging.getLogger("cent.bench")

_EPOCH = datetime(1970, 1, 1)
GZIP_MAGIC = b"\x1f\x8b"
"""The first two bytes of a gzip stream (RFC 1952): how a compressed trace is known."""


def _open_bytes(path: Path):
    """`path`'s bytes, decompressed when it starts with `GZIP_MAGIC`."""
    with open(path, "rb") as f:
        compressed = f.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")


@contextmanager
def open_text(path: Path, newline: str | None = None) -> Iterator[io.TextIOWrapper]:
    """`path` as UTF-8 text (a byte-order mark skipped), gzip'd or not. What cannot be read is a
    one-line ValueError, also when raised in the caller's `with` body as it reads: a byte that is not
    UTF-8 names the line and the fix; a damaged gzip stream says so."""
    try:
        with io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", newline=newline) as f:
            yield f
    except UnicodeDecodeError:
        with _open_bytes(path) as raw:
            utf16 = raw.read(2) in (b"\xff\xfe", b"\xfe\xff")  # UTF-16's byte-order mark (Excel's "Unicode text")
        if utf16:
            plain = Path(str(path).removesuffix(".gz"))
            after = ", after gunzip" if str(plain) != str(path) else ""
            raise ValueError(f"{path} is UTF-16 text: save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8 {plain} > "
                             f"{plain.with_name(plain.stem + '-utf8' + plain.suffix)}{after})") from None
        raise ValueError(f"{path}:{_not_utf8(path)}: the file is not UTF-8 text: save it as UTF-8 "
                         "(e.g. iconv -f latin1 -t utf-8)") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path} is a damaged gzip file ({exc}): compress the trace again, or give it "
                         "uncompressed") from None


def _not_utf8(path: Path) -> str:
    """`LINE: byte 0xNN at column C`: the first byte of `path` that is not UTF-8 (a UTF-8 character
    never holds a newline byte, so each line decodes on its own)."""
    with _open_bytes(path) as f:
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"{line_no}: byte {line[exc.start]:#04x} at column {exc.start + 1}"
    return "?"  # the decoder failed where a line decodes: not reached for UTF-8


def _seconds(text: str) -> tuple[float, float]:
    """A time in seconds -> (seconds, 0.0)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value, 0.0


class _DatetimeParser:
    """`2023-11-16 18:15:46.6805900` or `2024-05-10 00:00:00.009930+00:00` -> (whole seconds
    since 1970, fraction).

    Kept apart so 7 fractional digits (Azure 2023's) survive: one float of seconds since 1970
    would keep only ~7 significant digits below the second. A zone (Azure 2024's `+00:00`) is
    read to UTC; a datetime without one is taken as UTC, so both years' rows compare. Rows of
    one second share the parse.
    """

    def __init__(self) -> None:
        self._last_base = ""
        self._last_whole = 0

    def __call__(self, text: str) -> tuple[int, float]:
        base, dot, rest = text.strip().partition(".")
        frac = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        if dot and not frac:
            raise ValueError(text)
        base += rest[len(frac):]  # the zone, if any, after the fraction
        if base != self._last_base:
            whole = datetime.fromisoformat(base)
            if whole.tzinfo is not None:
                whole = whole.astimezone(timezone.utc).replace(tzinfo=None)
            self._last_whole = (whole - _EPOCH) // timedelta(seconds=1)
            self._last_base = base
        return self._last_whole, (int(frac) / 10 ** len(frac) if frac else 0.0)


@dataclass(frozen=True)
class CsvLayout:
    """Where a CSV trace format keeps the three values a request needs."""

    time_col: str
    prompt_col: str
    output_col: str
    make_time_parser: Callable[[], Callable[[str], tuple[float, float]]]
    time_example: str
    """What a good time value looks like, for error messages."""

    @property
    def columns(self) -> tuple[str, str, str]:
        return self.time_col, self.prompt_col, self.output_col

    @property
    def length_columns(self) -> tuple[str, str]:
        return self.prompt_col, self.output_col


class LengthsOnlyError(ParamError):
    """A CSV with a format's length columns and no time column (e.g. Vidur's length traces,
    `num_prefill_tokens, num_decode_tokens, num_total_tokens, pd_ratio`): lengths for synthetic
    arrivals (`TraceLengths.from_trace` reads them), not a trace to replay. `what` says so in a
    few words, for a caller that words its own fix (`cent bench --trace`: use --lengths-from)."""

    def __init__(self, path: Path, line: int, fmt: str) -> None:
        layout = CSV_LAYOUTS[fmt]
        self.fmt = fmt
        self.what = (f"the file has lengths only ({fmt}'s {', '.join(layout.length_columns)}), no arrival "
                     f"column {layout.time_col!r}")
        super().__init__(f"{path}:{line}: {self.what}: draw synthetic requests' lengths from it with "
                         f"TraceLengths.from_trace, or add the {layout.time_col!r} column to replay it")


ID_COLUMN = "request_id"
"""A CSV trace's optional column of its own request ids (rows without one are named by their index)."""

CSV_LAYOUTS: dict[str, CsvLayout] = {
    "vidur": CsvLayout("arrived_at", "num_prefill_tokens", "num_decode_tokens",
                       lambda: _seconds, "seconds from the trace start, e.g. 4.314579"),
    "azure": CsvLayout("TIMESTAMP", "ContextTokens", "GeneratedTokens",
                       _DatetimeParser, "a datetime, e.g. 2023-11-16 18:15:46.6805900 or "
                       "2024-05-10 00:00:00.009930+00:00"),
    "burstgpt": CsvLayout("Timestamp", "Request tokens", "Response tokens",
                          lambda: _seconds, "seconds, e.g. 5.0"),
}
"""The CSV formats by name; their column sets are disjoint, so a header names its format."""


def _count(value: object) -> int:
    """A token count: a non-negative integer (`12`, `"12"`, `"12.0"`); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            as_float = float(value)
            if not as_float.is_integer():
                raise
            number = int(as_float)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise ValueError(value)
    if number < 0:
        raise ValueError(value)
    return number


def _time_fix(layout: CsvLayout, text: str) -> str:
    """The fix for a time `layout` cannot read; where it is the other kind (a datetime under a column of
    seconds, seconds under Azure's datetimes), it names the columns of the format that reads it."""
    fix = f"use {layout.time_example}"
    other, kind = ("vidur", "seconds") if layout.make_time_parser is _DatetimeParser else ("azure", "datetimes")
    try:
        CSV_LAYOUTS[other].make_time_parser()(text)
    except ValueError:
        return fix
    return f"{fix}, or for {kind} name the columns {', '.join(CSV_LAYOUTS[other].columns)} (the {other} format)"


def _bad(where: str, column: str, value: object, fix: str) -> ValueError:
    return ValueError(f"{where}: column {column!r} = {value!r} is invalid: {fix}")


_COUNT_FIX = "use a whole number of tokens >= 0"


def _known_layouts() -> str:
    return "; ".join(f"{fmt}: {', '.join(l.columns)}" for fmt, l in CSV_LAYOUTS.items())


def _header(path: Path, reader) -> list[str]:
    """The stripped names of the first non-blank row of a `csv.reader`; ValueError when there
    is none."""
    for fields in reader:
        if any(field.strip() for field in fields):
            return [name.strip() for name in fields]
    raise ValueError(f"{path} is empty: a CSV trace needs a header row (one of {_known_layouts()}) "
                     "and a row per request")


def _csv_format_of(names: list[str]) -> str | None:
    """The format whose columns the header holds, as spelled or else without regard to case."""
    for fold in (False, True):
        for fmt, layout in CSV_LAYOUTS.items():
            if set(layout.columns) <= set(_as_layout_names(names, layout) if fold else names):
                return fmt
    return None


def _lengths_only_format(names: list[str]) -> str | None:
    """The format whose length columns, and not its time column, the header holds (any case)."""
    for fmt, layout in CSV_LAYOUTS.items():
        held = set(_as_layout_names(names, layout))
        if set(layout.length_columns) <= held and layout.time_col not in held:
            return fmt
    return None


def _as_layout_names(names: list[str], layout) -> list[str]:
    """The header with every name that is one of `layout`'s columns (or the id column) but for its
    case spelled as the layout spells it (`Arrived_At` is `arrived_at`); a name spelled exactly is kept."""
    known = {c.casefold(): c for c in (*layout.columns, ID_COLUMN)}
    return [n if n in known.values() else known.get(n.casefold(), n) for n in names]


_OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}
"""Separators a table is saved with instead of commas (Excel's semicolons where the comma is the decimal
mark, a TSV), by what a message calls them."""


def _check_commas(path: Path, line: int, names: list[str]) -> None:
    """Refuse a header read as one field that holds another separator: the file is not comma-separated,
    which no format name fixes (the format's own error would say to name one)."""
    if len(names) != 1:
        return
    for sep, what in _OTHER_SEPARATORS.items():
        if sep in names[0]:
            plain = Path(str(path).removesuffix(".gz"))
            after = ", after gunzip" if str(plain) != str(path) else ""
            raise ValueError(f"{path}:{line}: the header {names[0]!r} is separated by {what}, not commas: save "
                             f"the trace as comma-separated (e.g. tr {sep!r} ',' < {plain} > "
                             f"{plain.with_name(plain.stem + '-comma.csv')}{after})")


MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
"""A Mooncake trace's keys: its lines' JSON keys, which a CSV made from it keeps as column names."""


def _check_not_mooncake(path: Path, line: int, names: list[str]) -> None:
    """Refuse a CSV whose columns are Mooncake's keys with the two ways to replay it: Mooncake is read as
    JSON lines (its timestamps in milliseconds), and no CSV format has those columns."""
    if set(MOONCAKE_KEYS) <= {n.casefold() for n in names}:
        raise ValueError(f"{path}:{line}: the columns {', '.join(MOONCAKE_KEYS)} are Mooncake's keys, whose trace is "
                         "JSON lines: write one {\"timestamp\": MS, \"input_length\": N, \"output_length\": N} object a "
                         "line (a .jsonl file), or make it vidur's columns: arrived_at (seconds: timestamp / 1000, "
                         "Mooncake's are milliseconds), num_prefill_tokens, num_decode_tokens")


def sniff_csv_format(path: Path) -> str:
    """The CSV format whose columns the header of `path` holds; ValueError when none does."""
    with open_text(path, newline="") as f:
        reader = csv.reader(f)
        header = _header(path, reader)
    fmt = _csv_format_of(header)
    if fmt is None:
        _check_commas(path, reader.line_num, header)
        _check_not_mooncake(path, reader.line_num, header)
    if fmt is None and (lengths := _lengths_only_format(header)) is not None:
        raise LengthsOnlyError(path, reader.line_num, lengths)
    if fmt is None:
        raise ParamError(f"{path}:{reader.line_num}: header {header!r} matches no trace format: expected the "
                         f"columns of one of ({_known_layouts()}), or name the format with {{fmt=}}")
    return fmt


def read_csv(path: Path, fmt: str, lengths_only: bool = False) -> Iterator[Request]:
    """Requests of a `vidur`, `azure` or `burstgpt` CSV, in file order (blank lines skipped).
    `lengths_only`: the file may lack the time column (`LengthsOnlyError` without it), every
    request then arriving at 0 (for `TraceLengths`, which takes only the lengths)."""
    layout = CSV_LAYOUTS[fmt]
    parse_time = layout.make_time_parser()
    with open_text(path, newline="") as f:
        reader = csv.reader(f)
        names = _as_layout_names(_header(path, reader), layout)
        missing = [c for c in layout.columns if c not in names]
        if missing == [layout.time_col] and (lengths_only or _csv_format_of(names) is None):
            if not lengths_only:
                raise LengthsOnlyError(path, reader.line_num, fmt)
            missing = []
        if missing:
            _check_commas(path, reader.line_num, names)
            other = _csv_format_of(names)
            fix = (f"it is a {other} header: give {other} as the format ({{fmt}}), or {{none}} to detect it"
                   if other else "rename the column(s), or give the file's own format with {fmt=} (or {none} to "
                                 "detect it)")
            raise ParamError(f"{path}:{reader.line_num}: the header lacks the {fmt} column(s) "
                             f"{', '.join(map(repr, missing))}: {fix}")
        cols = [(names.index(c) if c in names else None, c) for c in layout.columns]
        i_id = names.index(ID_COLUMN) if ID_COLUMN in names else None
        ids = _UniqueIds()
        first: tuple[float, float] | None = None
        previous_s, previous_text = 0.0, ""
        row = 0
        try:
            for fields in reader:
                if not any(field.strip() for field in fields):
                    continue
                where = f"{path}:{reader.line_num}"
                if len(fields) < len(names):
                    raise ValueError(f"{where}: the row has {len(fields)} fields, the header "
                                     f"{len(names)}: write one value per column")
                if any(field.strip() for field in fields[len(names):]):  # a trailing comma is harmless
                    raise ValueError(f"{where}: the row has {len(fields)} fields, the header {len(names)}: write "
                                     "one value per column (quote a value that holds a comma)")
                (i_time, c_time), (i_prompt, c_prompt), (i_output, c_output) = cols
                try:
                    whole, frac = (0, 0.0) if i_time is None else parse_time(fields[i_time])
                except ValueError:
                    raise _bad(where, c_time, fields[i_time], _time_fix(layout, fields[i_time])) from None
                try:
                    num_prompt = _count(fields[i_prompt])
                except ValueError:
                    raise _bad(where, c_prompt, fields[i_prompt], _COUNT_FIX) from None
                try:
                    num_output = _count(fields[i_output])
                except ValueError:
                    raise _bad(where, c_output, fields[i_output], _COUNT_FIX) from None
                first = first or (whole, frac)
                arrival_s = (whole - first[0]) + (frac - first[1])
                if arrival_s < previous_s:
                    raise _earlier(where, c_time, fields[i_time], previous_text, "row")
                previous_s, previous_text = arrival_s, "" if i_time is None else fields[i_time]
                own = fields[i_id].strip() if i_id is not None else ""
                yield Request(ids.take(own or str(row), row), arrival_s, num_prompt, num_output,
                              trace_arrival_s=whole + frac)
                row += 1
        finally:  # also when the reader stops early (--num-requests)
            ids.warn(path, "row", "row")
    if not row:
        raise ValueError(f"{path} has no requests: a header and no rows under it; add a row per "
                         "request")


class _UniqueIds:
    """A trace's own request ids. An id names one request (its record, the engine's request), so a
    repeat is sent as `<id>#<index>`; `warn` names the repeats once."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.renamed: list[str] = []

    def take(self, request_id: str, index: int) -> str:
        if request_id in self.used:
            self.renamed.append(request_id)
            request_id = f"{request_id}#{index}"
            while request_id in self.used:  # an id of the file that is already "<id>#<index>"
                request_id += "#"
        self.used.add(request_id)
        return request_id

    def warn(self, path: Path, things: str, index: str) -> None:
        if self.renamed:
            n = len(self.renamed)
            log.warning("%s: %d %s%s repeat%s an earlier id (%s): sent as <id>#<%s>", path, n, things,
                        "s" if n > 1 else "", "" if n > 1 else "s",
                        ", ".join(map(repr, self.renamed[:5])) + (", ..." if n > 5 else ""), index)


def _earlier(where: str, column: str, value: object, previous: object, unit: str) -> ValueError:
    """An arrival before the previous row's (`unit`: row, line): name both raw values."""
    return ValueError(f"{where}: column {column!r} = {value!r} is earlier than the {unit} before "
                      f"({previous}): sort the file by {column!r}")


def _parse_json(text: str, path: Path, first_line: int, kind: type, fix: str):
    """`text` (starting at line `first_line` of `path`) parsed as a JSON `kind`, else ValueError."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{first_line + e.lineno - 1}: not JSON ({e.msg}): {fix}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path}:{first_line}: a JSON {type(value).__name__}, not a "
                         f"{kind.__name__}: {fix}")
    return value


def read_mooncake(path: Path) -> Iterator[Request]:
    """Requests of a Mooncake JSONL trace (`timestamp` in ms), in file order."""
    first_ms: float | None = None
    previous_s, previous_stamp = 0.0, None
    row = 0
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            obj = _parse_json(line.rstrip(), path, line_no, dict, 'write one {"timestamp", '
                              '"input_length", "output_length"} object per line (a ShareGPT file is one JSON '
                              'list of conversations: read it as the sharegpt format)')
            if "conversations" in obj and "timestamp" not in obj:
                raise ValueError(f"{where}: a ShareGPT conversation (its 'conversations', no 'timestamp'), read as a "
                                 "line of Mooncake's JSON-lines trace: a ShareGPT file is one JSON list of them, "
                                 "[{...}, {...}], replayed with --rate")
            for key in MOONCAKE_KEYS:
                if key not in obj:
                    raise ValueError(f"{where}: no {key!r} key: a JSON-lines trace is Mooncake's, every line "
                                     "with timestamp (ms), input_length and output_length (other layouts: "
                                     "docs/serving.md, Request traces)")
            stamp = obj["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) \
                    or not math.isfinite(stamp):
                raise _bad(where, "timestamp", stamp, "use a number of milliseconds")
            counts = []
            for key in ("input_length", "output_length"):
                try:
                    counts.append(_count(obj[key]))
                except ValueError:
                    raise _bad(where, key, obj[key], _COUNT_FIX) from None
            if not isinstance(obj.get("hash_ids", []), list):
                raise _bad(where, "hash_ids", obj["hash_ids"], "use a list of block hashes")
            first_ms = stamp if first_ms is None else first_ms
            arrival_s = (stamp - first_ms) / 1000.0
            if arrival_s < previous_s:
                raise _earlier(where, "timestamp", stamp, previous_stamp, "line")
            previous_s, previous_stamp = arrival_s, stamp
            yield Request(str(row), arrival_s, counts[0], counts[1], trace_arrival_s=stamp / 1000.0)
            row += 1
    if not row:
        raise ValueError(f"{path} has no requests: no line holds one; write one JSON object per "
                         "line")


MOONCAKE_RATE_SAMPLE = 1000
"""Rows from a Mooncake file's start whose mean rate tells its timestamps' unit (`mooncake_rate_per_s`):
enough to smooth a burst, few enough to read at once."""


def mooncake_rate_per_s(path: Path, sample: int = MOONCAKE_RATE_SAMPLE) -> tuple[int, float] | None:
    """(rows, requests per second) of the first `sample` rows of a Mooncake file, its timestamps read
    as milliseconds: (rows - 1) / their span. None when they all arrive at once (or only one): no rate,
    and no unit changes their replay. Read by `read_mooncake`, so a bad row is refused as a replay's."""
    rows, last_s = 0, 0.0
    for rows, req in enumerate(read_mooncake(path), start=1):
        last_s = req.arrival_s
        if rows == sample:
            break
    return (rows, (rows - 1) / last_s) if last_s > 0 else None


def _first_exchange(turns: list, where: str) -> tuple[str, str] | None:
    """(prompt, answer): turns 0 and 1 whoever speaks them, as vLLM's benchmark takes them (its
    ShareGPT dataset: `conversations[0]` and `[1]`'s values); None with fewer than two turns."""
    if len(turns) < 2:
        return None
    for i, turn in enumerate(turns[:2]):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: turn {i} {turn!r:.80} has no text: a turn is a {{'from', 'value'}} object "
                             "whose value is its text")
    return turns[0]["value"], turns[1]["value"]


_SHAREGPT_ENTRY = '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}'
"""A ShareGPT entry's shape, for the errors that name it."""


def read_sharegpt(path: Path, count_tokens: Callable[[str], int],
                  arrivals_s: Iterable[float]) -> Iterator[Request]:
    """Requests of a ShareGPT JSON file, arrival times taken in order from `arrivals_s`.

    Prompt: turn 0; output length: turn 1's length (vLLM's benchmark's reading, whoever speaks
    them). Both are counted with `count_tokens`; an empty text has 0 tokens whatever
    `count_tokens` adds (e.g. a BOS). Entries of fewer than two turns are skipped (as vLLM's
    benchmark skips them); they take no arrival time. The JSON is parsed whole
    (the stdlib has no streaming JSON reader), the requests are still yielded one by one.
    """
    with open_text(path) as f:
        text = f.read()
    entries = _parse_json(text, path, 1, list,
                          "a ShareGPT file is one JSON list of conversations")
    arrivals = iter(arrivals_s)
    first_s: float | None = None
    skipped = []
    ids = _UniqueIds()
    try:
        for index, entry in enumerate(entries):
            where = f"{path}: entry {index}"
            turns = entry.get("conversations") if isinstance(entry, dict) else None
            if not isinstance(turns, list):
                if isinstance(entry, dict) and "messages" in entry:
                    raise ValueError(f"{where} has 'messages' (OpenAI's chat layout), not ShareGPT's 'conversations': "
                                     f"write each as {_SHAREGPT_ENTRY}")
                if isinstance(entry, dict) and "conversations" in entry:
                    raise _bad(where, "conversations", turns, "each entry needs a list of turns")
                what = (f"has no 'conversations' key (its keys: {', '.join(map(repr, list(entry)[:8]))})"
                        if isinstance(entry, dict) else f"is a {type(entry).__name__}, not an object")
                raise ValueError(f"{where} {what}: each entry is {_SHAREGPT_ENTRY}")
            exchange = _first_exchange(turns, where)
            if exchange is None:
                skipped.append(index)
                continue
            arrival = next(arrivals, None)
            if arrival is None:
                raise ValueError(f"{path}: arrivals_s ran out at entry {index}: pass an unbounded "
                                 "arrival process such as iter_arrival_times_s(rate, seed=...)")
            first_s = arrival if first_s is None else first_s
            prompt, answer = exchange
            yield Request(ids.take(str(entry.get("id", index)), index), float(arrival - first_s),
                          count_tokens(prompt) if prompt else 0,
                          count_tokens(answer) if answer else 0, prompt, trace_arrival_s=float(arrival))
    finally:  # also when the reader stops early (--num-requests): what was skipped or renamed before it
        ids.warn(path, "conversation", "entry index")
        if skipped and first_s is not None:
            log.warning("%s: %d conversation%s of fewer than two turns skipped (entr%s %s)",
                        path, len(skipped), "s" if len(skipped) > 1 else "", "ies" if len(skipped) > 1 else "y",
                        ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else ""))
    if first_s is None:
        raise ValueError(f"{path} has no requests: " + (
            f"none of its {len(entries)} conversations has two turns (a prompt and an answer)"
            if entries else "the list of conversations is empty"))
