"""The few libbpf calls bcc 0.26 has no Python wrapper for, through ctypes:
``bpf_prog_test_run_opts`` (BPF_PROG_RUN), ``bpf_obj_pin`` and ``bpf_obj_get``."""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import os
from dataclasses import dataclass
from functools import cache


class _TestRunOpts(ct.Structure):
    # struct bpf_test_run_opts (libbpf 1.x, bpf.h)
    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


@cache
def _lib() -> ct.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ct.CDLL(name, use_errno=True)
    lib.bpf_prog_test_run_opts.argtypes = [ct.c_int, ct.POINTER(_TestRunOpts)]
    lib.bpf_prog_test_run_opts.restype = ct.c_int
    lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
    lib.bpf_obj_pin.restype = ct.c_int
    lib.bpf_obj_get.argtypes = [ct.c_char_p]
    lib.bpf_obj_get.restype = ct.c_int
    return lib


@dataclass(frozen=True, slots=True)
class RunResult:
    retval: int
    data: bytes
    duration_ns: int


def prog_run(prog_fd: int, packet: bytes, repeat: int = 1) -> RunResult:
    """Run an XDP program on ``packet`` (BPF_PROG_RUN). With ``repeat`` > 1 the
    kernel feeds the program its own output again: only for programs that do not
    rewrite the packet."""
    size_out = len(packet) + 256
    buf_in = ct.create_string_buffer(packet, len(packet))
    buf_out = ct.create_string_buffer(size_out)
    opts = _TestRunOpts(
        sz=ct.sizeof(_TestRunOpts),
        data_in=ct.cast(buf_in, ct.c_void_p),
        data_out=ct.cast(buf_out, ct.c_void_p),
        data_size_in=len(packet),
        data_size_out=size_out,
        repeat=repeat,
    )
    if _lib().bpf_prog_test_run_opts(prog_fd, ct.byref(opts)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_PROG_RUN: {os.strerror(err)}")
    return RunResult(opts.retval, buf_out.raw[: opts.data_size_out], opts.duration)


def obj_pin(fd: int, path: str) -> None:
    if _lib().bpf_obj_pin(fd, path.encode()) != 0:
        err = ct.get_errno()
        raise OSError(err, f"pin {path}: {os.strerror(err)}")


def obj_get(path: str) -> int:
    fd = _lib().bpf_obj_get(path.encode())
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, f"open pinned {path}: {os.strerror(err)}")
    return fd
