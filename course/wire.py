"""
What crosses between the grader and the process that runs a student's code, and the grader's end of it.

A value is made of None, bool, int, float, str, lists, tuples, dicts and torch tensors. It travels as one JSON
header and one safetensors blob of its tensors: never pickle, so reading a message runs no code of the sender,
and a float subclass whose `__eq__` says yes, or a tensor subclass with its own comparisons, arrives as plain
data. Anything else (a numpy array, a model) arrives as `Other`: its type's name and a short repr, so a test can
say what came back. A tensor keeps its dtype, shape and whether it requires a gradient; a tensor subclass other
than nn.Parameter arrives as `Other`.

    student = Remote(channel)          # the grader's end: student.kl(s, t, 2.0) runs probe `kl` over there
    student = Local("tests/parts_probes.py")   # the same calls in this process, through the same encoding

A call returns the probe's value, or raises `Raised` (the student's code raised: its one-line message) or
`Ended` (the process ended or took too long; the grader starts another for the next test).
"""
import json
import queue
import struct
import threading

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

LIMIT = 256 << 20  # bytes in one message: more is refused (the tests' values are a few KB)
DEPTH = 40         # nesting of lists, tuples and dicts
TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


class Other:
    """A value that cannot cross as itself: its type's qualified name and the start of its repr."""

    def __init__(self, type, text=""):
        self.type, self.text = type, text

    def __repr__(self):
        return f"<a {self.type}{': ' + self.text if self.text else ''}>"

    def __eq__(self, other):
        return isinstance(other, Other) and (self.type, self.text) == (other.type, other.text)

    __hash__ = None


class Raised(Exception):
    """The student's code raised; the message is its one line."""


class Ended(Exception):
    """The process that runs the student's code ended, or did not answer in time."""


class WireError(ValueError):
    """A message that is not one: too long, not JSON, a tensor it does not carry."""


def type_name(value):
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def one_line(e):
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _other(value):
    try:
        text = " ".join(repr(value).split())[:120]
    except BaseException:  # a repr that raises is the student's business: the type is enough
        text = ""
    return {"$other": type_name(value), "repr": text}


def _plain_tensor(value):
    """The data of a tensor (or tensor subclass) as a plain, contiguous CPU tensor of its own."""
    with torch._C.DisableTorchFunctionSubclass():
        t = torch.Tensor.detach(value)
        return torch.Tensor.contiguous(torch.Tensor.cpu(t)).clone()


def _encode(value, tensors, depth):
    if depth > DEPTH:
        raise WireError(f"nested more than {DEPTH} deep")
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):  # an int subclass crosses as the int it is
        return int.__index__(value)
    if isinstance(value, float):  # a float subclass (numpy.float64 included) crosses as its value
        return float.__float__(value)
    if kind in TENSOR_TYPES or isinstance(value, torch.Tensor):
        if kind not in TENSOR_TYPES:
            return _other(value)
        key = str(len(tensors))
        try:
            tensors[key] = _plain_tensor(value)
        except Exception:  # sparse, quantized, meta: not data a test compares
            return _other(value)
        return {"$tensor": key, "grad": bool(value.requires_grad)}
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    if kind is list:
        return {"$list": [_encode(v, tensors, depth + 1) for v in value]}
    if kind is tuple or isinstance(value, torch.Size):
        return {"$tuple": [_encode(v, tensors, depth + 1) for v in value]}
    if kind is dict:
        return {"$dict": [[_encode(k, tensors, depth + 1), _encode(v, tensors, depth + 1)] for k, v in value.items()]}
    try:  # numpy scalars and 0-d arrays: the number they hold
        import numpy as np
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return _encode(value.item(), tensors, depth)
    except ImportError:
        pass
    return _other(value)


def encode(value) -> bytes:
    """value as bytes: a 4-byte length, the JSON header, then the safetensors blob of its tensors."""
    tensors = {}
    header = json.dumps(_encode(value, tensors, 0), allow_nan=True, separators=(",", ":")).encode()
    blob = save_tensors(tensors)
    data = struct.pack(">I", len(header)) + header + blob
    if len(data) > LIMIT:
        raise WireError(f"a message of {len(data)} bytes: over the limit of {LIMIT}")
    return data


def _decode(node, tensors, depth):
    if depth > DEPTH:
        raise WireError(f"nested more than {DEPTH} deep")
    if node is None or type(node) in (bool, int, float, str):
        return node
    if type(node) is not dict or len(node) not in (1, 2):
        raise WireError(f"not a value: {str(node)[:80]}")
    (tag, body), *rest = node.items()
    if tag == "$tensor":
        if body not in tensors:
            raise WireError(f"tensor {body} is not in the message")
        t = tensors[body].clone()  # a tensor of its own, not a view into the message
        if rest and rest[0][1] and (t.is_floating_point() or t.is_complex()):
            t.requires_grad_(True)
        return t
    if tag == "$list":
        return [_decode(v, tensors, depth + 1) for v in body]
    if tag == "$tuple":
        return tuple(_decode(v, tensors, depth + 1) for v in body)
    if tag == "$dict":
        out = {}
        for k, v in body:
            key = _decode(k, tensors, depth + 1)
            out[key if key is None or type(key) in (bool, int, float, str, tuple) else repr(key)] = \
                _decode(v, tensors, depth + 1)
        return out
    if tag == "$dtype":
        dtype = getattr(torch, str(body), None)
        return dtype if isinstance(dtype, torch.dtype) else Other("torch.dtype", str(body)[:40])
    if tag == "$other":
        return Other(str(body)[:200], str(rest[0][1])[:200] if rest else "")
    raise WireError(f"unknown tag {tag!r}")


def decode(data: bytes):
    if len(data) > LIMIT or len(data) < 4:
        raise WireError(f"a message of {len(data)} bytes")
    n = struct.unpack(">I", data[:4])[0]
    if 4 + n > len(data):
        raise WireError("a header longer than its message")
    try:
        header = json.loads(data[4:4 + n])
        tensors = load_tensors(bytes(data[4 + n:]))
        return _decode(header, tensors, 0)
    except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as e:
        raise WireError(f"not a message: {one_line(e)}") from None
    except Exception as e:  # safetensors' own errors
        raise WireError(f"not a message: {one_line(e)}") from None


# ------------------------------------------------------------------------------------------------------------
# Framing: an 8-byte length, then the message

def send(stream, value):
    data = encode(value)
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def read_exactly(stream, n):
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(stream):
    """The next value on stream; None at its end."""
    head = read_exactly(stream, 8)
    if head is None:
        return None
    n = struct.unpack(">Q", head)[0]
    if n > LIMIT:
        raise WireError(f"a message of {n} bytes: over the limit of {LIMIT}")
    data = read_exactly(stream, n)
    if data is None:
        return None
    return decode(data)


class Channel:
    """The grader's end of a byte stream pair to a worker: values sent, values received with a time limit. A
    thread reads (pipes have no time-outs on every platform); the end of the stream, or a message that is not
    one, is put in the queue as `Ended`."""

    def __init__(self, reader, writer):
        self.reader, self.writer, self.inbox = reader, writer, queue.Queue()
        threading.Thread(target=self._read, args=(reader,), daemon=True).start()

    def close(self):
        for stream in (self.writer, self.reader):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def _read(self, reader):
        while True:
            try:
                value = receive(reader)
            except (OSError, WireError, ValueError) as e:
                self.inbox.put(Ended(f"the test process sent what is not a message ({one_line(e)})"))
                return
            if value is None:
                self.inbox.put(Ended("the test process ended"))
                return
            self.inbox.put(value)

    def send(self, value):
        try:
            send(self.writer, value)
        except (OSError, ValueError) as e:
            raise Ended(f"the test process ended ({one_line(e)})") from None

    def receive(self, timeout):
        try:
            value = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise Ended(f"no answer within {timeout:g} s") from None
        if isinstance(value, Ended):
            self.inbox.put(value)  # every later call ends the same way
            raise value
        return value


class Remote:
    """student.NAME(*args, **kwargs): probe NAME run by the worker at the other end of `channel`, its value
    returned. `on_end` is called when the worker ended or took longer than `timeout` seconds."""

    def __init__(self, channel, timeout, on_end=None):
        self._channel, self._timeout, self._on_end = channel, timeout, on_end

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    def _call(self, name, args, kwargs):
        try:
            self._channel.send({"call": name, "args": list(args), "kwargs": kwargs})
            answer = self._channel.receive(self._timeout)
        except Ended:
            if self._on_end:
                self._on_end()
            raise
        return answer_value(answer)


def answer_value(answer):
    if type(answer) is dict and "value" in answer:
        return answer["value"]
    if type(answer) is dict and type(answer.get("raised")) is str:
        raise Raised(answer["raised"][:400])
    raise Ended(f"the test process answered {str(answer)[:100]}")


class Local:
    """The probes of `path` run in this process (pytest, a quick look), their inputs and outputs passed through
    encode and decode as at grading, so that a test sees the same types either way."""

    def __init__(self, path):
        self._path, self._module = path, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    def _call(self, name, args, kwargs):
        if self._module is None:
            import importlib.util
            spec = importlib.util.spec_from_file_location("parts_probes", self._path)
            self._module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self._module)
        request = decode(encode({"args": list(args), "kwargs": kwargs}))
        try:
            value = getattr(self._module, name)(*request["args"], **request["kwargs"])
        except Exception as e:
            raise Raised(one_line(e)) from None
        return decode(encode(value))
