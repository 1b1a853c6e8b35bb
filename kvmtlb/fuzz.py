"""Mutation fuzzing of the input files: scenarios and cost workloads.

`mutate` turns a valid file into a broken (or differently valid) one: deleted, duplicated and moved
lines, values of the wrong type, huge, negative and boundary numbers, every config knob and every
op keyword of the parsers' own tables with random arguments, other spellings of the same TOML
(inline tables, dotted keys, one-line strings with escapes, line-ending backslashes), unicode
(line and paragraph separators, NEL, form feeds, bidi controls, combining marks), deep nesting,
truncation and binary bytes. It is seeded: the same seed gives the same mutant.

`try_scenario` and `try_workload` run one file the way the tool does and sort the outcome:

- `input-error`: an `InputFileError` (exit code 2) whose message names the file and a line (or,
  for something missing from the file, only the file) and gives a fix;
- `accepted`: the file loaded and ran (scenario: the system was built, a short exploration with a
  small `max_states` ran, `--matrix`'s configurations and `kvmtlb lint` ran; workload: a short
  cost simulation of each configuration ran);
- `bad-message`: an input error without the file, the line or the fix;
- `uncaught`: any other exception, anywhere in those steps, or an `error` verdict (an upstream
  policy does not raise on a valid scenario: when it does, the input reached a corner the model
  does not handle).

tests/test_fuzz.py runs a few hundred mutants; bench/fuzz.py runs tens of thousands.
This module sits at the top of the layers, beside the CLI: it drives both the checker and the
cost model.
"""

from __future__ import annotations

import random
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmtlb.errors import InputFileError

# -- the mutator ----------------------------------------------------------------------------------

UNICODE = (
    "\u2028",  # LINE SEPARATOR: str.splitlines() breaks there, TOML does not
    "\u2029",  # PARAGRAPH SEPARATOR
    "\x85",  # NEL
    "\x0c",  # form feed
    "\x0b",  # vertical tab (not allowed in TOML strings)
    "\x1c",  # file separator (splitlines breaks there too)
    "\u200b",  # zero-width space
    "\ufeff",  # BOM
    "\u202e",  # right-to-left override
    "\u0301",  # combining acute accent
    "\u0663",  # ARABIC-INDIC DIGIT THREE: int() accepts it
    "\uff11",  # FULLWIDTH DIGIT ONE
    "é",
    "\U0001f600",
    "\t",
    "\r",
    "\r\n",
    "\x00",
    "\x7f",
    "\x1b",
    "\ud800",  # a lone surrogate: not encodable as UTF-8 (written with surrogatepass)
)
NUMBERS = (
    "0",
    "1",
    "2",
    "3",
    "7",
    "8",
    "9",
    "15",
    "16",
    "17",
    "64",
    "65",
    "255",
    "4095",
    "4096",
    "32767",
    "32768",
    "65535",
    "65536",
    "1000000",
    "1000000000",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "99999999999999999999999999",
    "-1",
    "-16",
    "-9223372036854775808",
    "0x0",
    "0x1",
    "0x1000",
    "0x1001",
    "0xfff",
    "0xfffff000",
    "0x100000000",
    "0x200000000",
    "0x300000000",
    "0xffffffffffffffff",
    "0o17",
    "0b11",
    "1_000",
    "+5",
    "1e9",
    "1.5",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "5e-324",
)
VALUES = (
    "true",
    "false",
    '""',
    '"x"',
    '"intel"',
    '"amd"',
    '"0x1000"',
    "[]",
    "[1, 2]",
    '["invept-all"]',
    '["nope"]',
    "[[1], [2]]",
    "{}",
    "{ a = 1 }",
    "1979-05-27",
    "07:32:00",
    "1979-05-27T07:32:00Z",
    '"""\nread 0x1000\n"""',
    "'''literal'''",
    '"\\u2028"',
    '"\\n\\n"',
    '"' + "x" * 5000 + '"',
)
TOKENS = (
    "0x0",
    "0x1000",
    "0x2000",
    "0x1001",
    "0x10000",
    "0x11000",
    "0x12000",
    "0x80000",
    "0x90000",
    "0xfffff000",
    "0x100000000",
    "0x300000000",
    "0x" + "f" * 40,
    "-0x1000",
    # 2 MiB regions of [host] ("HPA RIGHTS 2m"): aligned, unaligned and overlapping bases
    "2m",
    "4m",
    "2M",
    "0x200000",
    "0x201000",
    "0x3ff000",
    "0x400000",
    "0x401000",
    "0x600000",
    "0x0 rwx 2m",
    "0x400000 rwx 2m",
    "0x401000 rwx 2m",
    "0x400000 r 2m",
    # regions split for NX ("HPA RIGHTS 2m nx") and their recovery
    "nx",
    "0x400000 rwx 2m nx",
    "0x400000 rwx nx 2m",
    "0x401000 rwx 2m nx",
    "recover_nx",
    "spawn recover_nx",
    # 2 MiB guest pages ([guest] "GPA FLAGS 2m", map/unmap ... 2m)
    "0x400000 w 2m",
    "0x401000 w 2m",
    "0x400000 wx 2m",
    "0x200000 -> 0x400000 w 2m",
    "0x200000 2m",
    "0x201000 2m",
    "1",
    "-1",
    "99999999999999999999",
    "vcpu0",
    "vcpu1",
    "vcpu2",
    "vcpu7",
    "vcpu9",
    "vcpu-1",
    "vcpu01",
    "pcpu0",
    "pcpu1",
    "pcpu9",
    "mm",
    "all",
    "others",
    "vcpu0,vcpu1",
    "vcpu1,vcpu1",
    "vcpu1,",
    "->",
    "on",
    "pcid=0",
    "pcid=1",
    "pcid=4095",
    "pcid=4096",
    "pcid=-1",
    "pcid=",
    "noflush",
    "emulated",
    "root=b",
    "root=default",
    "root=",
    "root=Zz",
    "root=nosuch",
    "b",
    "default",
    "nosuch",
    "concurrent",
    "local-first",
    "[guest.b]",
    "[guest.default]",
    "[guest.b.c]",
    "vm0",
    "vm1",
    "vm2",
    "vm-1",
    "[vm1]",
    "[vm1.guest]",
    "[vm1.host]",
    "[guest.vm1]",
    'vcpus = ["vcpu1"]',
    'vcpus = ["vcpu0", "vcpu1"]',
    '"0x20000" = "0x90000 rwx"',
    "[tables]",
    "[schedule]",
    "set_cr0",
    "wp=0",
    "wp=1",
    "wp=2",
    "moves = 1",
    "moves = 0",
    'vcpus = ["vcpu1"]',
    "vcpus = []",
    'default = "0x30000"',
    'b = "0x10000"',
    "pge=0",
    "pge=1",
    "pcide=1",
    "pcide=0",
    "smep=1",
    "smep=2",
    # set_sregs (KVM_SET_SREGS from the host thread)
    "set_sregs",
    "cr3=b",
    "cr3=default",
    "cr3=nosuch",
    "cr3=",
    "cr3=0x1000",
    "efer=0x500",
    "level=2",
    "level=3",
    "level=4",
    "level=5",
    "level=",
    "0x40001000",
    "0",
    "2",
    "3",
    "4",
    "w",
    "wg",
    "x",
    "u",
    "wuxg",
    "ww",
    "rwx",
    "r",
    "q",
    "#",
    # nested VMX (docs/scenarios.md, "Nested VMX")
    "vmxon",
    "vmxoff",
    "vmlaunch",
    "vmresume",
    "invvpid",
    "vmcall",
    "vpid=0",
    "vpid=1",
    "vpid=2",
    "vpid=65536",
    "vpid=",
    "l2",
    "[guest.l2]",
    "vmrun",
    "invlpga",
    "asid=1",
    "asid=16",
    "tlb_control=3",
    "tlb_control=2",
    # nested EPT
    "invept",
    "ept_map",
    "ept_unmap",
    "[ept12]",
    "0x40000",
    "tdp = true",
    # dirty logging with PML
    "pml = true",
    "pml = false",
    "pml = 1",
    "ept_ad = false",
    # nested NPT
    "npt_map",
    "npt_unmap",
    "[npt12]",
    'vendor = "amd"',
    # several EPT12 tables, an L2 without nested EPT on an EPT L0
    "[ept12.b]",
    "[ept12.default]",
    "ept=b",
    "ept=default",
    "ept=",
    "ept=nosuch",
    # memslot moves: a GPA without memory, the op, its arrow and GPAs
    '"none"',
    "none",
    '"0x20000" = "none"',
    "move_memslot 0x10000 -> 0x20000",
    "move_memslot 0x20000 -> 0x10000",
    "move_memslot 0x10000 0x20000",
    "move_memslot",
    "0x20000",
)


@dataclass(frozen=True)
class Grammar:
    """What a file kind may say: its tables and keys (from the parser's own tables)."""

    tables: dict[str, dict[str, str]]  # table -> key -> kind: bool int float str list
    ops: Sequence[str] = ()  # op keywords (scenario threads)


def scenario_grammar() -> Grammar:
    from kvmtlb.model.nested_scenario import NESTED_OPS
    from kvmtlb.model.scenario import CONFIG_KEYS, GUEST_OPS, HOST_OPS

    kinds = {bool: "bool", int: "int", str: "str", list: "list"}
    return Grammar(
        {"config": {k: kinds[t] for k, t in CONFIG_KEYS.items()}, "vm1": {"vcpus": "list"}},
        (*GUEST_OPS, *NESTED_OPS, *HOST_OPS),
    )


def workload_grammar() -> Grammar:
    from kvmtlb.cost.workload import CONFIG_KEYS, RATE_KEYS, TLB_KEYS, WORKLOAD_KEYS

    kinds = {bool: "bool", int: "int", str: "str", list: "list", float: "float"}
    return Grammar(
        {
            "config": {k: kinds[t] for k, t in CONFIG_KEYS.items()},
            "workload": {k: kinds[t] for k, t in WORKLOAD_KEYS.items()},
            "rates": dict.fromkeys(RATE_KEYS, "float"),
            "tlb": dict.fromkeys(TLB_KEYS, "int"),
        }
    )


_KEY_LINE = re.compile(r'^(\s*"?[A-Za-z0-9_.-]+"?\s*=\s*)(.*)$')
_NUMBER = re.compile(r"(?<![\w.])(-?0x[0-9a-fA-F_]+|-?\d[\d_]*(?:\.\d+)?(?:e-?\d+)?)(?![\w.])")


class Mutator:
    """Seeded mutations of one file kind."""

    def __init__(self, grammar: Grammar, sources: Sequence[str]) -> None:
        self.grammar = grammar
        self.sources = list(sources)
        self.lines_pool = [ln for s in sources for ln in s.split("\n") if ln.strip()]

    def mutate(self, text: str, rng: random.Random) -> bytes:
        """One mutant of `text`: one to three text mutations, sometimes then a byte mutation."""
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            m = rng.choice(self._mutations())
            text = m(text, rng)
        data = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.06:
            data = _bytes(data, rng)
        return data

    def _mutations(self) -> list[Callable[[str, random.Random], str]]:
        ms: list[Callable[[str, random.Random], str]] = [
            _delete_line,
            _duplicate_line,
            _move_line,
            self._splice,
            _wrong_value,
            _wrong_value,
            _number,
            _number,
            _number,
            _unicode,
            _unicode,
            _truncate,
            self._knob,
            self._knob,
            self._knob,
            _inline_table,
            _dotted_keys,
            _nest,
            _header,
            _escape_in_string,
        ]
        if self.grammar.ops:
            ms += [self._op, self._op, self._op, self._new_op, self._new_op, _one_line_thread]
            ms += [_continuation_thread, _literal_thread, _many_ops]
        return ms

    # -- grammar-aware ------------------------------------------------------------------------
    def _knob(self, text: str, rng: random.Random) -> str:
        """Set a key of a known table to a random value (mostly of its own type)."""
        table = rng.choice(sorted(self.grammar.tables))
        keys = self.grammar.tables[table]
        if rng.random() < 0.1:
            key = rng.choice(("frobnicate", "Vendor", "vcpu", "rates", '"max asid"'))
        else:
            key = rng.choice(sorted(keys))
        kind = keys.get(key, "int")
        value = _value_of(kind, rng) if rng.random() < 0.8 else rng.choice(VALUES)
        lines = text.split("\n")
        header = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{table}]"), None)
        existing = [
            i
            for i, ln in enumerate(lines)
            if re.match(rf'^\s*"?{re.escape(key)}"?\s*=', ln) and (header is None or i > header)
        ]
        if existing and rng.random() < 0.7:
            lines[existing[0]] = f"{key} = {value}"
        elif header is not None:
            lines.insert(header + 1, f"{key} = {value}")
        else:
            lines += ["", f"[{table}]", f"{key} = {value}"]
        return "\n".join(lines)

    def _op(self, text: str, rng: random.Random) -> str:
        """Change one op line of a thread: its keyword, one argument, or their number."""
        lines = text.split("\n")
        idx = _op_lines(lines)
        if not idx:
            return self._new_op(text, rng)
        i = rng.choice(idx)
        words = lines[i].split()
        r = rng.random()
        if r < 0.3:
            words[0] = rng.choice(self.grammar.ops)
        elif r < 0.65 and len(words) > 1:
            words[rng.randrange(1, len(words))] = rng.choice(TOKENS)
        elif r < 0.8 and len(words) > 1:
            del words[rng.randrange(1, len(words))]
        else:
            words.insert(rng.randrange(1, len(words) + 1), rng.choice(TOKENS))
        lines[i] = " ".join(words)
        return "\n".join(lines)

    def _new_op(self, text: str, rng: random.Random) -> str:
        """Insert a random op (any keyword, plausible arguments) into some thread."""
        lines = text.split("\n")
        starts = [i for i, ln in enumerate(lines) if re.match(r'^\s*"?\w+"?\s*=\s*"""', ln)]
        op = rng.choice(self.grammar.ops)
        args = " ".join(rng.choice(TOKENS) for _ in range(rng.choice((0, 1, 1, 2, 3))))
        line = f"{op} {args}".strip()
        if not starts:
            return text + f'\n[threads]\nvcpu0 = """\n{line}\n"""\n'
        lines.insert(rng.choice(starts) + 1, line)
        return "\n".join(lines)

    def _splice(self, text: str, rng: random.Random) -> str:
        if not self.lines_pool:
            return text
        lines = text.split("\n")
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(self.lines_pool))
        return "\n".join(lines)


def _value_of(kind: str, rng: random.Random) -> str:
    if kind == "bool":
        return rng.choice(("true", "false", "1", '"true"'))
    if kind == "str":
        return rng.choice(('"intel"', '"amd"', '"arm"', '""', "1"))
    if kind == "list":
        return rng.choice(
            (
                '["invept-all"]',
                '["invept-all", "invvpid-single"]',
                "[]",
                '["invept-all", "invept-all"]',
                '["nope"]',
                "[1]",
                '[["invept-all"]]',
                '"invept-all"',
                '["vcpu1"]',
                '["vcpu0", "vcpu1"]',
                '["vcpu9"]',
            )
        )
    if kind == "float":
        return rng.choice(NUMBERS)
    return rng.choice([n for n in NUMBERS if "." not in n and "n" not in n] + ["1e3", "true"])


def _op_lines(lines: list[str]) -> list[int]:
    """Lines inside multi-line strings (the ops of the threads)."""
    out, inside = [], False
    for i, ln in enumerate(lines):
        n = ln.count('"""') + ln.count("'''")
        if inside and n == 0 and ln.strip():
            out.append(i)
        if n % 2:
            inside = not inside
    return out


def _delete_line(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def _duplicate_line(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return "\n".join(lines)


def _move_line(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    line = lines.pop(rng.randrange(len(lines)))
    lines.insert(rng.randrange(len(lines) + 1), line)
    return "\n".join(lines)


def _wrong_value(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    idx = [i for i, ln in enumerate(lines) if _KEY_LINE.match(ln)]
    if not idx:
        return text
    i = rng.choice(idx)
    m = _KEY_LINE.match(lines[i])
    assert m is not None
    if m.group(2).startswith(('"""', "'''")):
        return text  # the value spans lines: changing its first line only breaks the TOML
    lines[i] = m.group(1) + rng.choice(VALUES + NUMBERS)
    return "\n".join(lines)


def _number(text: str, rng: random.Random) -> str:
    found = list(_NUMBER.finditer(text))
    if not found:
        return text
    m = rng.choice(found)
    hexy = m.group(1).lstrip("-").startswith("0x")
    pool = [n for n in NUMBERS if n.lstrip("-").startswith("0x") == hexy] or list(NUMBERS)
    return text[: m.start()] + rng.choice(pool) + text[m.end() :]


def _unicode(text: str, rng: random.Random) -> str:
    ch = rng.choice(UNICODE)
    if rng.random() < 0.6:  # inside a string: where tomllib accepts it and line counts drift
        quotes = [m.end() for m in re.finditer(r'"', text)]
        if quotes:
            i = rng.choice(quotes)
            return text[:i] + ch + text[i:]
    i = rng.randrange(len(text) + 1)
    return text[:i] + ch + text[i:]


def _truncate(text: str, rng: random.Random) -> str:
    return text[: rng.randrange(len(text) + 1)]


def _bytes(data: bytes, rng: random.Random) -> bytes:
    r = rng.random()
    i = rng.randrange(len(data) + 1)
    if r < 0.4:
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        return data[:i] + junk + data[i:]
    if r < 0.7 and data:
        j = min(i, len(data) - 1)
        return data[:j] + bytes([data[j] ^ (1 << rng.randrange(8))]) + data[j + 1 :]
    if r < 0.85:
        return data[:i] + "é".encode()[:1] + data[i:]  # half a UTF-8 sequence
    return b"\xff\xfe" + data  # a UTF-16 byte-order mark


def _inline_table(text: str, rng: random.Random) -> str:
    """Rewrite a table of single-line keys as an inline table (the same TOML data)."""
    return _rewrite_table(text, rng, inline=True)


def _dotted_keys(text: str, rng: random.Random) -> str:
    """Rewrite a table of single-line keys as dotted keys at the top level (the same data)."""
    return _rewrite_table(text, rng, inline=False)


def _rewrite_table(text: str, rng: random.Random, *, inline: bool) -> str:
    lines = text.split("\n")
    headers = [i for i, ln in enumerate(lines) if re.match(r"^\[[a-z]+\]\s*$", ln.strip())]
    if not headers:
        return text
    h = rng.choice(headers)
    name = lines[h].strip()[1:-1]
    end = next((j for j in range(h + 1, len(lines)) if lines[j].startswith("[")), len(lines))
    body = [ln.split("#", 1)[0].strip() for ln in lines[h + 1 : end]]
    body = [b for b in body if b]
    if any('"""' in b or "'''" in b for b in body) or not all(_KEY_LINE.match(b) for b in body):
        return text
    rest = lines[:h] + lines[end:]
    new = [f"{name} = {{ {', '.join(body)} }}"] if inline else [f"{name}.{b}" for b in body]
    # keys of the top level must come before the first table header
    first = next((j for j, ln in enumerate(rest) if ln.startswith("[")), len(rest))
    return "\n".join(rest[:first] + new + rest[first:])


def _nest(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    idx = [i for i, ln in enumerate(lines) if _KEY_LINE.match(ln) and '"""' not in ln]
    if not idx:
        return text
    i = rng.choice(idx)
    m = _KEY_LINE.match(lines[i])
    assert m is not None
    n = rng.choice((3, 50, 400, 3000))
    inner = rng.choice(("", "1", '"x"', "{}"))
    lines[i] = m.group(1) + "[" * n + inner + "]" * n
    return "\n".join(lines)


def _header(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    idx = [i for i, ln in enumerate(lines) if ln.startswith("[")]
    if not idx:
        return text
    i = rng.choice(idx)
    name = lines[i].strip("[] ")
    lines[i] = rng.choice(
        (f"[[{name}]]", f"[{name}.sub]", f'["{name}"]', f"[ {name} ]", "[threads]", "[config]")
    )
    return "\n".join(lines)


def _escape_in_string(text: str, rng: random.Random) -> str:
    quotes = [m.end() for m in re.finditer(r'(?<!")"(?!")', text)]
    if not quotes:
        return text
    i = rng.choice(quotes)
    esc = rng.choice(("\\n", "\\u2028", "\\u0085", "\\f", "\\t", "\\u0000", "\\U0001F600", "\\x"))
    return text[:i] + esc + text[i:]


_THREAD = re.compile(r'^(\s*"?\w+"?\s*=\s*)"""\n(.*?)"""', re.S | re.M)


def _one_line_thread(text: str, rng: random.Random) -> str:
    """A thread as a one-line basic string with \\n escapes (the same ops)."""
    return _THREAD.sub(
        lambda m: m.group(1) + '"' + m.group(2).replace("\n", "\\n") + '"', text, count=1
    )


def _continuation_thread(text: str, rng: random.Random) -> str:
    """A thread opened by a line-ending backslash: the newline after `\"\"\"\\` is trimmed."""
    return _THREAD.sub(lambda m: m.group(1) + '"""\\\n\n' + m.group(2) + '"""', text, count=1)


def _literal_thread(text: str, rng: random.Random) -> str:
    return _THREAD.sub(lambda m: m.group(1) + "'''\n" + m.group(2) + "'''", text, count=1)


def _many_ops(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    idx = _op_lines(lines)
    if not idx:
        return text
    i = rng.choice(idx)
    lines[i : i + 1] = [lines[i]] * rng.choice((10, 100, 1000))
    return "\n".join(lines)


# -- running a mutant -----------------------------------------------------------------------------

ACCEPTED, INPUT_ERROR, BAD_MESSAGE, UNCAUGHT = "accepted", "input-error", "bad-message", "uncaught"


@dataclass(frozen=True)
class Outcome:
    kind: str  # ACCEPTED | INPUT_ERROR | BAD_MESSAGE | UNCAUGHT
    detail: str  # the message, or the traceback
    seconds: float


def _judge(path: str, e: InputFileError) -> str:
    """INPUT_ERROR when the message names the file and the line (or, for something the file
    lacks, the file alone) and gives a fix; BAD_MESSAGE otherwise."""
    text = str(e)
    if not e.fix.strip() or "\n  fix: " not in text:
        return BAD_MESSAGE
    if e.line > 0:
        return INPUT_ERROR if text.startswith(f"{path}:{e.line}: ") else BAD_MESSAGE
    missing = re.match(r"(missing|no \[|cannot read|\[\w+\] needs)", e.message)
    return INPUT_ERROR if missing and text.startswith(f"{path}: ") else BAD_MESSAGE


def try_scenario(path: Path, policy: str = "kvm-6.18", max_states: int = 150) -> Outcome:
    """Load, lint, build, explore briefly and list the --matrix configurations of `path`."""
    from kvmtlb.check.explorer import explore
    from kvmtlb.check.lint import lint
    from kvmtlb.check.runner import configurations
    from kvmtlb.kvm.policy import registry
    from kvmtlb.model.scenario import load
    from kvmtlb.model.system import build

    t0 = time.perf_counter()
    p = str(path)
    reg = registry()
    try:
        scenario = load(p, set(reg))
        lint(p)
        configurations(scenario)
        system = build(scenario, reg[policy]())
        result = explore(system, max_states=max_states)
    except InputFileError as e:
        return Outcome(_judge(p, e), str(e), time.perf_counter() - t0)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        return Outcome(UNCAUGHT, traceback.format_exc(), time.perf_counter() - t0)
    if result.verdict == "error":
        return Outcome(UNCAUGHT, f"error verdict: {result.detail}", time.perf_counter() - t0)
    return Outcome(ACCEPTED, result.label, time.perf_counter() - t0)


def try_workload(path: Path, policy: str = "kvm-6.18", accesses: int = 500) -> Outcome:
    """Load `path` and simulate each of its configurations for a few hundred accesses."""
    from kvmtlb.cost.simulate import Simulation
    from kvmtlb.cost.workload import load
    from kvmtlb.kvm.policy import registry

    t0 = time.perf_counter()
    p = str(path)
    try:
        w = load(p)
        w = w.with_overrides(accesses=min(w.accesses, accesses))
        for config in w.configs[:4]:
            Simulation(w, config, registry()[policy]()).run()
    except InputFileError as e:
        return Outcome(_judge(p, e), str(e), time.perf_counter() - t0)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        return Outcome(UNCAUGHT, traceback.format_exc(), time.perf_counter() - t0)
    return Outcome(ACCEPTED, "ran", time.perf_counter() - t0)


__all__ = [
    "ACCEPTED",
    "BAD_MESSAGE",
    "INPUT_ERROR",
    "UNCAUGHT",
    "Grammar",
    "Mutator",
    "Outcome",
    "scenario_grammar",
    "try_scenario",
    "try_workload",
    "workload_grammar",
]
