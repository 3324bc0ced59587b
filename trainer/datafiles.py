"""Users' data files, read whole and checked once: every byte decoded, every row parsed, every problem kept.

Encodings: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8") is read as it is. Any other encoding is
the one `dataset.encoding` names, else the one charset-normalizer detects (CP949/EUC-KR from Korean Excel, cp1252
from Western Excel, UTF-16). A file that decodes as UTF-8 up to one broken byte is UTF-8 with a broken byte, not
another encoding, so it is reported (offset and line), never guessed at.

Rows: a JSONL line that is not a JSON object, a CSV record with more fields than its header (non-empty extras) or
fewer, a quote that is never closed: each is a `FileProblem` with its line. Reading is cached per file state, so
validate, plan and run in one process read each file once.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

# charset-normalizer names the smallest table that decodes the sample; read with its superset, so a rarer
# character later in the file still decodes (CP949 extends EUC-KR, GB18030 extends GB2312, cp1252 ASCII).
_SUPERSET = {"euc_kr": "cp949", "gb2312": "gb18030", "gbk": "gb18030", "ascii": "utf_8"}
_SHOWN_CHARS = 60  # of a broken line, in a message


@dataclass(frozen=True)
class FileProblem:
    """One broken place in a data file: its line (1-based; None for the whole file), what must hold, what was
    found there, what is allowed and the fix."""

    line: int | None
    invariant: str
    found: str
    allowed: str
    fix: str


@dataclass(frozen=True)
class FileRows:
    rows: tuple[dict, ...]
    """Every parsed row, in file order (blank lines left out)."""
    lines: tuple[int, ...]
    """The line each row starts on (1-based), for messages."""
    columns: tuple[str, ...]
    """A CSV's header; a JSONL file's keys, in the order first seen."""
    encoding: str
    """The codec that decoded the file (Python's name)."""
    detected: bool
    """True when charset-normalizer chose `encoding` (neither UTF-8 nor set by `dataset.encoding`)."""
    problems: tuple[FileProblem, ...]


class DataFileError(ValueError):
    """A data file that cannot be used as it is; every problem at once."""

    def __init__(self, path: Path, problems: tuple[FileProblem, ...]):
        self.path, self.problems = path, problems
        shown = "; ".join(f"line {p.line}: {p.invariant}, found {p.found}. Fix: {p.fix}" if p.line
                          else f"{p.invariant}, found {p.found}. Fix: {p.fix}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{path}: {shown}{more}")


def known_encoding(name: str) -> bool:
    """Is `name` a text codec Python knows (cp949, euc-kr, utf-16, ...; not base64)?"""
    try:
        return codecs.lookup(name)._is_text_encoding
    except LookupError:
        return False


def read_file(path: Path, encoding: str | None = None) -> FileRows:
    """Every row of a .jsonl or .csv file, with every problem found (cached while the file is unchanged)."""
    stat = path.stat()
    return _read(str(path.resolve()), stat.st_size, stat.st_mtime_ns, encoding)


@functools.lru_cache(maxsize=16)
def _read(path: str, size_bytes: int, mtime_ns: int, encoding: str | None) -> FileRows:
    raw = Path(path).read_bytes()
    text, used, detected, problem = decode(raw, encoding)
    if problem is not None:
        return FileRows((), (), (), used, detected, (problem,))
    parse = _csv_rows if path.endswith(".csv") else _jsonl_rows
    rows, lines, columns, problems = parse(text)
    return FileRows(tuple(rows), tuple(lines), tuple(columns), used, detected, tuple(problems))


def decode(raw: bytes, encoding: str | None) -> tuple[str, str, bool, FileProblem | None]:
    """(text, codec used, whether it was detected, the problem when no codec decodes it)."""
    if encoding is not None:
        return _decode_as(raw, encoding, "")
    try:
        return raw.decode("utf-8-sig"), "utf-8", False, None
    except UnicodeDecodeError as exc:
        if any(byte >= 0x80 for byte in raw[:exc.start]):  # valid UTF-8 text before it: one broken byte
            return "", "utf-8", False, _decode_problem(raw, exc, "utf-8", "UTF-8 up to this byte")
    from charset_normalizer import from_bytes  # only for files that are not UTF-8

    best = from_bytes(raw).best()
    if best is None:
        return "", "utf-8", False, FileProblem(None, "the file must be text in one encoding", "bytes that are "
                                               "neither UTF-8 nor any encoding charset-normalizer recognises",
                                               "UTF-8, or an encoding named in dataset.encoding",
                                               "re-save the file as UTF-8, or set dataset.encoding (e.g. cp949)")
    text, used, _, problem = _decode_as(raw, _SUPERSET.get(best.encoding, best.encoding), " (detected)")
    return text, used, True, problem


def _decode_as(raw: bytes, encoding: str, how: str) -> tuple[str, str, bool, FileProblem | None]:
    name = codecs.lookup(encoding).name
    bom = codecs.BOM_UTF8 if name == "utf-8" and raw.startswith(codecs.BOM_UTF8) else b""
    try:
        return raw[len(bom):].decode(name), name, bool(how), None
    except UnicodeDecodeError as exc:
        return "", name, bool(how), _decode_problem(raw, exc, name + how, f"{name} text")


def _decode_problem(raw: bytes, exc: UnicodeDecodeError, tried: str, allowed: str) -> FileProblem:
    line = raw.count(b"\n", 0, exc.start) + 1
    found = f"byte 0x{raw[exc.start]:02x} at byte offset {exc.start}, which {tried} cannot decode"
    return FileProblem(line, f"the file must decode as {tried}", found, allowed,
                       "re-save the file as UTF-8 (in Excel: CSV UTF-8), or name its encoding in dataset.encoding "
                       "(e.g. cp949 for Korean Windows, cp1252 for Western Windows)")


def _jsonl_rows(text: str) -> tuple[list[dict], list[int], list[str], list[FileProblem]]:
    rows, lines, columns, problems = [], [], {}, []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(FileProblem(number, "every line must be one JSON object",
                                        f"{exc.msg} (column {exc.colno}): {_shown(line)}", "one {...} per line",
                                        f"fix or remove line {number} (a record over several lines, or a JSON "
                                        "array file, must be rewritten as one object per line)"))
            continue
        if not isinstance(row, dict):
            problems.append(FileProblem(number, "every line must be one JSON object", f"a JSON "
                                        f"{type(row).__name__}: {_shown(line)}", "one {...} per line",
                                        f"write line {number} as an object with the dialogue and summary keys"))
            continue
        rows.append(row)
        lines.append(number)
        columns.update(dict.fromkeys(row))
    return rows, lines, list(columns), problems


def _csv_rows(text: str) -> tuple[list[dict], list[int], list[str], list[FileProblem]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: a stray quote is an error
    header: list[str] | None = None
    rows, lines, problems, previous_end = [], [], [], 0
    while True:
        start = previous_end + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the reader goes on at the next line
            problems.append(_quote_problem(start, reader.line_num, str(exc)))
            previous_end = reader.line_num
            continue
        previous_end = reader.line_num
        if not record:
            continue
        if header is None:
            header = record
            problems += _header_problems(header)
            continue
        problem = _width_problem(start, record, header)
        if problem is not None:
            problems.append(problem)
            continue
        rows.append(dict(zip(header, record)))
        lines.append(start)
    return rows, lines, header or [], problems


def _header_problems(header: list[str]) -> list[FileProblem]:
    named = [name for name in header if name.strip()]
    twice = sorted({name for name in named if named.count(name) > 1})
    if not twice:
        return []
    return [FileProblem(1, "the header's column names must differ", f"{twice} more than once", "distinct names",
                        "rename the repeated columns in line 1")]


def _width_problem(start: int, record: list[str], header: list[str]) -> FileProblem | None:
    extra = record[len(header):]
    if len(record) < len(header):
        return FileProblem(start, f"every row must have the header's {len(header)} fields",
                           f"{len(record)}: {_shown(','.join(record))}", f"{len(header)} fields ({', '.join(header)})",
                           f"a newline or comma inside a field must be quoted (\"...\"); fix or remove line {start}")
    if any(field.strip() for field in extra):
        return FileProblem(start, f"every row must have the header's {len(header)} fields",
                           f"{len(record)}, the extra ones {_shown(', '.join(extra))}", f"{len(header)} fields "
                           f"({', '.join(header)})", f"quote fields that contain commas (\"a, b\"), or add a column "
                           f"name to line 1; fix line {start}")
    return None


def _quote_problem(start: int, end: int, reason: str) -> FileProblem:
    if "end of data" in reason or "field larger" in reason:  # a quote opened at `start` that never closes
        return FileProblem(start, "every quoted field must be closed", f"a quote opened in the row at line {start} "
                           f"and still open at line {end} ({reason})", "\"...\" with inner quotes doubled (\"\")",
                           f"close the quote in line {start}, or double the quote characters inside the field")
    return FileProblem(start, "a quoted field must end at its closing quote", reason,
                       "\"...\" followed by a comma or the end of the line",
                       f"double the quote characters inside the field in line {start} (\"\")")


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")
