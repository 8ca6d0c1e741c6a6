"""The few libbpf calls bcc 0.26 has no Python wrapper for, through ctypes:
``bpf_prog_test_run_opts`` (BPF_PROG_RUN), ``bpf_obj_pin``, ``bpf_obj_get``,
``bpf_obj_get_info_by_fd`` (a pinned map's shape) and the raw element calls used to
copy a pinned map's entries into its replacement."""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
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
    lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    lib.bpf_obj_get_info_by_fd.restype = ct.c_int
    lib.bpf_map_get_next_key.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    lib.bpf_map_get_next_key.restype = ct.c_int
    lib.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    lib.bpf_map_lookup_elem.restype = ct.c_int
    lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
    lib.bpf_map_update_elem.restype = ct.c_int
    lib.bpf_map_lookup_batch.argtypes = [
        ct.c_int,
        ct.c_void_p,
        ct.c_void_p,
        ct.c_void_p,
        ct.c_void_p,
        ct.POINTER(ct.c_uint32),
        ct.c_void_p,
    ]
    lib.bpf_map_lookup_batch.restype = ct.c_int
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


class _MapInfo(ct.Structure):
    # the head of struct bpf_map_info (uapi bpf.h); the kernel fills what fits
    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    if _lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)) != 0:
        err = ct.get_errno()
        raise OSError(err, f"map info: {os.strerror(err)}")
    return MapInfo(info.type, info.key_size, info.value_size, info.max_entries, info.map_flags)


def map_items(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map, as raw bytes (entries that vanish while we
    walk are skipped)."""
    lib = _lib()
    out = []
    prev, key = None, ct.create_string_buffer(key_size)
    value = ct.create_string_buffer(value_size)
    while lib.bpf_map_get_next_key(fd, prev, key) == 0:
        if lib.bpf_map_lookup_elem(fd, key, value) == 0:
            out.append((key.raw, value.raw))
        prev = ct.create_string_buffer(key.raw, key_size)
    return out


def array_values(fd: int, value_size: int, entries: int) -> bytes:
    """The values of an array map's ``entries`` slots, concatenated, in as few
    syscalls as the kernel allows (BPF_MAP_LOOKUP_BATCH)."""
    lib = _lib()
    step = max(1, min(entries, (8 << 20) // max(value_size, 1)))
    keys = (ct.c_uint32 * step)()
    values = ct.create_string_buffer(value_size * step)
    out = bytearray()
    token = ct.c_uint32(0)
    first = True
    while len(out) < value_size * entries:
        count = ct.c_uint32(step)
        rc = lib.bpf_map_lookup_batch(
            fd,
            None if first else ct.byref(token),
            ct.byref(token),
            keys,
            values,
            ct.byref(count),
            None,
        )
        err = ct.get_errno() if rc != 0 else 0
        out += values.raw[: value_size * count.value]
        first = False
        if rc != 0:
            if err == errno.ENOENT:  # the last batch
                break
            raise OSError(err, f"map lookup batch: {os.strerror(err)}")
    return bytes(out)


def map_update(fd: int, key: bytes, value: bytes) -> None:
    if _lib().bpf_map_update_elem(fd, key, value, 0) != 0:
        err = ct.get_errno()
        raise OSError(err, f"map update: {os.strerror(err)}")
