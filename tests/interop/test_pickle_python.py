"""Interop: common/pickle.c against real Python pickle (the RQ backend's
serializer), through the unit test binary $TURNOUT_BIN_DIR/unit/test_pickle:

- PICKLE_DUMP_DIR=dir: the binary writes pickles made by pickle_dumps and
  pickle_dumps_tuple; Python loads each and compares it with its own copy of
  the value (the tuple form must load as a tuple);
- PICKLE_LOAD_FILE=path: the binary loads one pickle written here by Python
  (protocols 0-5) and prints it as compact JSON, or "refused: <reason>" with
  exit status 3 for what the reader must refuse.

Values are compared type for type (True is not 1, 1 is not 1.0, -0.0 is not
0.0). A missing binary fails the test (build it with `make unit`)."""
import datetime
import json
import math
import os
import pickle
import pickletools
import subprocess

import pytest

from fixtures_turnout import binary

PROTOCOLS = list(range(0, pickle.HIGHEST_PROTOCOL + 1))

JOB = ("tasks.evaluate_code", None, ["e1", "print(1)", "python"],
       {"timeout": 30, "engine": "docker", "priority": "high"})
RESULT = {"status": "completed", "output": "hi\n", "error": None, "exit_code": 0, "duration_s": 0.012}


def nested(depth, inner):
    v = inner
    for _ in range(depth):
        v = [v]
    return v


def same(a, b):
    """Equal and of the same types all the way down (dict order aside)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def as_json(v):
    """What the C reader makes of a plain value: tuples are lists, bytes
    and bytearray are str (they are valid UTF-8 here)."""
    if isinstance(v, (list, tuple)):
        return [as_json(x) for x in v]
    if isinstance(v, dict):
        return {k: as_json(x) for k, x in v.items()}
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    return v


def run(env_extra, timeout=60):
    exe = binary("unit/test_pickle")
    env = dict(os.environ, **env_extra)
    return subprocess.run([exe], env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------ C writes, Python reads

# Python's copy of the values tests/unit/test_pickle.c (dump_files) writes.
DUMPED = {
    "job": JOB,
    "result": RESULT,
    "scalars": [0, 1, -1, 255, 256, 65535, 65536, -2147483648, 2147483647, 2147483648,
                9223372036854775807, -9223372036854775808, -129, -256, -32769, 0.5, -0.0, 1e100,
                5e-324, 1.7976931348623157e308, 0.1, True, False, None, "", "\u00e9\U0001f600\u4e2d",
                "a\0b"],
    "nested": {"a": [[[]]], "b": {"c": {"d": []}}, "": [{}], "t": [1, [2, [3]]]},
    "empty_tuple": (),
    "one_tuple": (["x"],),
    "null": None,
    "deep": nested(64, "deep"),
    "big": [f"k{i}" if i % 2 == 0 else i ** 4 for i in range(3000)] + [{f"k{i}": -i for i in range(1500)}],
}

# What the writer may emit: protocol 2 plain values, nothing that imports or calls.
WRITER_OPCODES = {"PROTO", "STOP", "MARK", "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1",
                  "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "EMPTY_LIST", "APPENDS",
                  "EMPTY_DICT", "SETITEMS", "EMPTY_TUPLE", "TUPLE"}


def test_c_writer_loads_in_python(tmp_path):
    r = run({"PICKLE_DUMP_DIR": str(tmp_path)})
    assert r.returncode == 0, f"test_pickle failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert r.stdout.rstrip().endswith(" 0 failed"), r.stdout
    written = sorted(p.stem for p in tmp_path.glob("*.pickle"))
    assert written == sorted(DUMPED), written
    for name, want in DUMPED.items():
        data = (tmp_path / f"{name}.pickle").read_bytes()
        ops = [op.name for op, _, _ in pickletools.genops(data)]
        assert ops[0] == "PROTO" and data[1] == 2, (name, ops[:3])
        assert set(ops) <= WRITER_OPCODES, (name, set(ops) - WRITER_OPCODES)
        got = pickle.loads(data)
        assert same(got, want), f"{name}: Python loads {got!r:.300}, expected {want!r:.300}"
    # RQ's job data: the top level is a tuple, nested arrays stay lists
    job = pickle.loads((tmp_path / "job.pickle").read_bytes())
    assert type(job) is tuple and type(job[2]) is list and type(job[3]) is dict


# ------------------------------------------------------ Python writes, C reads

shared = [1, "s"]
ACCEPTED = {
    "result": RESULT,
    "job": JOB,
    "nested": [1, [2, (3, 4)], (), (5,), (6, 7, 8, 9), {"a": [True, False]}, [[[]]], {}],
    "unicode": ["\u00e9\U0001f600\u4e2d", "a\\b\n\r\0\x1a\"'c", "\\u0041 \\U0001f600", "\u20ac" * 300,
                "".join(chr(c) for c in range(1, 0x800, 7))],
    "ints": [0, 1, -1, 127, 128, 255, 256, 65535, 65536, -2**31, 2**31 - 1, 2**31, -2**31 - 1,
             2**40, 2**63 - 1, -2**63, -129],
    "floats": [0.0, -0.0, 0.1, 0.012, 1e100, 1e-300, 1e-310, 5e-324, 1.7976931348623157e308, -2.5],
    "scalars": [True, False, None, "", 0],
    "long_list": list(range(2500)),          # APPENDS in batches of 1000
    "big_dict": {f"key{i}": i for i in range(1500)},  # SETITEMS in batches
    "shared": [shared, shared, {"x": shared}, ("t", "t")],
    "deep": nested(64, 1),
    "top_str": "just a string",
    "top_int": -42,
}
ACCEPTED_BYTES = {  # bytes from protocol 3, bytearray from protocol 5
    "bytes": (3, [b"raw\xc3\xa9", b""]),
    "bytearray": (5, [bytearray(b"ba"), b"\xe4\xb8\xad"]),
}


def c_load(tmp_path, data):
    f = tmp_path / "in.pickle"
    f.write_bytes(data)
    return run({"PICKLE_LOAD_FILE": str(f)}, timeout=20)


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_python_pickle_loads_in_c(tmp_path, name, proto):
    value = ACCEPTED[name]
    r = c_load(tmp_path, pickle.dumps(value, protocol=proto))
    assert r.returncode == 0, f"{name} protocol {proto}: {r.stdout}{r.stderr}"
    got = json.loads(r.stdout)
    assert same(got, as_json(value)), f"{name} protocol {proto}: C gave {r.stdout[:300]}"


@pytest.mark.parametrize("name", sorted(ACCEPTED_BYTES))
def test_python_bytes_load_in_c(tmp_path, name):
    first, value = ACCEPTED_BYTES[name]
    for proto in range(first, pickle.HIGHEST_PROTOCOL + 1):
        r = c_load(tmp_path, pickle.dumps(value, protocol=proto))
        assert r.returncode == 0, f"{name} protocol {proto}: {r.stdout}{r.stderr}"
        assert same(json.loads(r.stdout), as_json(value)), f"{name} protocol {proto}: {r.stdout}"


class Plain:
    pass


class Calls:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def recursive_list():
    v = []
    v.append(v)
    return v


def recursive_dict():
    v = {}
    v["self"] = v
    return v


REFUSED = {
    "set": ({1, 2}, "refused"),
    "frozenset": (frozenset([1]), "refused"),
    "datetime": (datetime.datetime(2026, 1, 2, 3, 4, 5), "a pickle that imports or calls"),
    "instance": (Plain(), "a pickle that imports or calls"),
    "os_system": (Calls(), "a pickle that imports or calls"),
    "recursive_list": (recursive_list(), "into itself"),
    "recursive_dict": (recursive_dict(), "into itself"),
    "nan": (float("nan"), "NaN is not a JSON number"),
    "inf": ([float("inf")], "infinity is not a JSON number"),
    "bigint": (2**64, "opcode LONG"),
    "neg_bigint": (-2**63 - 1, "opcode LONG"),
    "int_key": ({1: "a"}, "dict key is a int"),
    "tuple_key": ({(1, 2): "a"}, "dict key is a tuple"),
    "bytes_key": ({b"k": "a"}, "dict key is a"),
    "too_deep": (nested(65, 1), "deeper than 64"),
    "bad_utf8": ([b"\xff"], "not valid UTF-8"),
}


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_python_pickle_refused_in_c(tmp_path, name, proto):
    value, reason = REFUSED[name]
    r = c_load(tmp_path, pickle.dumps(value, protocol=proto))
    assert r.returncode == 3, f"{name} protocol {proto}: expected a refusal, got {r.returncode}: {r.stdout}{r.stderr}"
    assert r.stdout.startswith("refused: "), r.stdout
    # bytes before protocol 3 are themselves a call (_codecs.encode)
    if not (proto < 3 and name in ("bytes_key", "bad_utf8")):
        assert reason in r.stdout, f"{name} protocol {proto}: {r.stdout}"


@pytest.mark.parametrize("proto", [0, 1, 2])
def test_python_bytes_before_protocol_3_are_calls(tmp_path, proto):
    r = c_load(tmp_path, pickle.dumps(b"ab", protocol=proto))
    assert r.returncode == 3 and "opcode GLOBAL (c) refused: a pickle that imports or calls" in r.stdout, r.stdout
