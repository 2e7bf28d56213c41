"""Confines a Tessera Python executor with Linux's Landlock before it runs users' functions.

A function runs as the worker's Unix user. Without a sandbox it could read what that user can:
the worker's shards and secret key, other executors' logs, the scheduler's files on the same
host; open TCP connections to the cluster's endpoints; signal or ptrace the worker. Landlock
(Linux 5.13 and later, unprivileged) lets a process give up access for itself and everything
it forks, irrevocably. After `confine`:

- files: read (and execute) only beneath the interpreter's own folders (its prefixes and
  `sys.path`), the system's (`/usr`, `/lib*`, `/bin`, `/etc`, `/proc`, `/sys`) and folders the
  worker's operator named (`--python-read`); read and write only in the executor's scratch
  folder (its `TMPDIR` and working folder) and folders named with `--python-write`; nothing
  else (the worker's data folder and key among it, and the host's secrets in `/etc`:
  `SYSTEM_PRIVATE`);
- TCP: no bind, no connect (Landlock ABI 4, Linux 6.7);
- no signals to processes outside the sandbox, no abstract Unix sockets outside it (ABI 6,
  Linux 6.12); ptrace of processes outside it is refused by Landlock at every ABI, and with it
  `/proc/PID/mem` and `environ` of the worker.

What it does not cover: UDP and other non-TCP sockets and a file's metadata (a seccomp filter,
below, refuses those), connecting to Unix sockets by path (the worker's same-host socket checks
who connects), CPU and memory (the worker's limits).
"""
from __future__ import annotations

import ctypes
import os
import sys
import sysconfig

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446   # the same on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights, and the ABI that introduced each past the first.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_REMOVE_DIR, _REMOVE_FILE, _MAKE_CHAR, _MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_MAKE_REG, _MAKE_SOCK, _MAKE_FIFO, _MAKE_BLOCK, _MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

# Rights that apply to a file (a rule on a file, not a folder, may grant only these).
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_READ = _EXECUTE | _READ_FILE | _READ_DIR

# What a system folder is read for, besides the interpreter's own.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/opt")
# The host's secrets in those folders, kept out like the worker's own: a worker run as root
# (as CI runs it) owns them, and with every capability given up its functions could still read
# what root owns and may read, its password hashes and host keys among them.
SYSTEM_PRIVATE = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/ssh", "/etc/ssl/private",
                  "/etc/sudoers", "/etc/sudoers.d", "/etc/security/opasswd", "/etc/krb5.keytab", "/etc/pki/tls/private",
                  "/etc/letsencrypt", "/etc/wireguard", "/etc/NetworkManager/system-connections", "/etc/ipsec.secrets",
                  "/etc/ipsec.d/private", "/etc/openvpn", "/etc/kubernetes", "/etc/docker", "/etc/munge",
                  "/etc/slurm/slurmdbd.conf",
                  # Tessera's own (deploy/systemd keeps every daemon's and user's key beneath it).
                  "/etc/tessera")
# Devices functions may use.
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")


class SandboxUnavailable(RuntimeError):
    """Landlock is missing or refused: the executor does not run functions unconfined."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """The kernel's Landlock ABI (0: none: the kernel lacks it, or it is turned off)."""
    libc = _libc()
    v = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(v))


def _beneath(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies beneath it (both real paths)."""
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/") or folder == ""


def rules(paths, private) -> tuple:
    """The real paths to grant for `paths`, keeping clear of `private` ones (the worker's data
    folder, its key): a path beneath a private one is dropped; a folder holding a private path
    is replaced by its entries, the same way down (Landlock only ever adds access, so a private
    path inside a granted folder cannot be carved out of it). Missing paths are skipped.
    Returns (granted, dropped)."""
    private = [os.path.realpath(p) for p in private if p]
    granted, dropped = [], []

    def add(p, depth=0):
        if not p or not os.path.exists(p):
            return
        r = os.path.realpath(p)
        if any(_beneath(r, q) for q in private):
            dropped.append(r)
            return
        if any(_beneath(q, r) for q in private):
            # Too deep to split: nothing of it (never the whole).
            if depth >= 16:
                dropped.append(r)
                return
            try:
                names = sorted(os.listdir(r))
            except OSError:
                return
            for name in names:
                entry = os.path.join(r, name)
                # An entry that is a link may lead anywhere (`/`, say): not followed.
                if not os.path.islink(entry):
                    add(entry, depth + 1)
            return
        if r not in granted:
            granted.append(r)

    for p in paths:
        add(p)
    return granted, dropped


def interpreter_folders() -> list:
    """The folders this interpreter imports from: its prefixes, its install paths and `sys.path`."""
    out = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            out.append(p)
    out += [p for p in sys.path if p]
    return out


# Syscalls a function may not make at all, by architecture (seccomp), and the native ones'
# numbers of socket() and socketpair(), which may make only Unix sockets: Landlock governs
# TCP alone (an MPTCP socket connected past it), so no Internet, packet or netlink sockets.
# Also no io_uring (it makes sockets without socket()), no ptrace or process_vm_*, no kernel
# keyrings, bpf or perf; no chmod, chown, utime or xattr, by path or by descriptor (Landlock
# does not govern a file's metadata: a function could make the worker's shards readable by
# every local user, or, by a descriptor opened for reading, any file of its user it may read:
# as root, /etc/shadow). No memfd_create or memfd_secret: a memory file's pages are in no
# process's resident size until mapped, so a function could hold memory past its limit; nor
# System V shared memory (shmget, shmat, shmctl, shmdt), which outlives the process that made it.
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SOCKET_CALLS = {"x86_64": (41, 53), "aarch64": (198, 199)}
_DENIED_CALLS = {
    "x86_64": (90, 91, 92, 93, 94, 268, 452, 260, 132, 235, 261, 280, 188, 189, 190, 197, 198, 199, 463, 466,
               425, 426, 427, 101, 310, 311, 248, 249, 250, 321, 298, 323, 319, 447, 29, 30, 31, 67),
    "aarch64": (52, 53, 452, 54, 55, 88, 5, 6, 7, 14, 15, 16, 463, 466, 425, 426, 427, 117, 270, 271, 217, 218, 219, 280, 241, 282, 279, 447, 194, 195, 196, 197),
}
# truncate() by path: Landlock governs it from ABI 3 (Linux 6.2) on; before, the filter refuses
# it (ftruncate needs a descriptor open for writing, which Landlock governs at every ABI).
_TRUNCATE_CALLS = {"x86_64": (76,), "aarch64": (45,)}
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
_AF_UNIX = 1


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program(machine: str, landlock_abi: int = 3) -> list:
    """The filter as (code, jt, jf, k) instructions: other architectures' calls (i386 through
    int 0x80, x32) and the denied ones fail with EPERM (truncate too where Landlock's ABI is
    below 3); socket() and socketpair() unless for a Unix socket fail with EACCES; everything
    else is allowed."""
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, eperm, eacces = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 13
    arch, (sock, pair), denied = _AUDIT_ARCH[machine], _SOCKET_CALLS[machine], _DENIED_CALLS[machine]
    if landlock_abi < 3:
        denied = tuple(denied) + _TRUNCATE_CALLS[machine]
    # Laid out from the end: [.. checks ..] allow; check_domain: ld args[0]; jeq AF_UNIX; eacces; allow; eperm
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, eperm), (ld, 0, 0, 0)]
    if machine == "x86_64":
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    checks = [(nr, "deny") for nr in denied] + [(sock, "domain"), (pair, "domain")]
    # After the checks: ret allow (1), then the domain check (4 instructions), then ret eperm.
    n = len(checks)
    for i, (nr, what) in enumerate(checks):
        left = n - i - 1          # checks after this one
        to_domain = left + 1      # skip them and `ret allow`
        to_deny = left + 1 + 4
        prog.append((jeq, to_domain if what == "domain" else to_deny, 0, nr))
    prog += [(ret, 0, 0, allow),
             (ld, 0, 0, 16), (jeq, 1, 0, _AF_UNIX), (ret, 0, 0, eacces), (ret, 0, 0, allow),
             (ret, 0, 0, eperm)]
    return prog


def _drop_capabilities(libc, machine: str) -> None:
    """Gives up every capability (a worker run as root would otherwise pass Landlock's ptrace
    check of the worker's memory and files by CAP_SYS_ADMIN, chown what it likes, open packet
    sockets): the bounding set, the ambient set, then effective, permitted and inheritable."""
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP; EINVAL past the last capability
            if ctypes.get_errno() == 22:
                break
            if os.geteuid() == 0:
                raise SandboxUnavailable(f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")
            break
    libc.prctl(47, 4, 0, 0, 0)   # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.syscall(_SYS_CAPSET[machine], ctypes.byref(header), ctypes.byref(data)) != 0:
        raise SandboxUnavailable(f"capset failed: {os.strerror(ctypes.get_errno())}")


def _install_seccomp(libc, machine: str, landlock_abi: int) -> None:
    prog = seccomp_program(machine, landlock_abi)
    filters = (_SockFilter * len(prog))(*[_SockFilter(*i) for i in prog])
    fprog = _SockFprog(len(prog), filters)
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER (no_new_privs is already set).
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        raise SandboxUnavailable(f"installing the seccomp filter failed: {os.strerror(ctypes.get_errno())}")


def signal_scope_problem(abi: int, allowed: bool, release: str) -> str | None:
    """Why Landlock's `abi` is not enough for functions that must not signal the worker or other
    users' executors (scoping signals came with ABI 6, Linux 6.12), unless the operator `allowed` it."""
    if abi >= 6 or allowed:
        return None
    return (f"Landlock on this kernel ({release}, ABI {abi}) cannot keep users' functions from signalling the worker "
            "and other users' executors (that needs Linux 6.12): start the worker with --python-sandbox "
            "landlock-unscoped-signals to run them so anyway")


def confine(read=(), write=(), private=(), scratch=None, allow_unscoped_signals=False) -> dict:
    """Confines this process and what it forks, for good (see the module's docstring): reads
    beneath the interpreter's and the system's folders and `read`, writes beneath `write` and
    `scratch`, none beneath `private`. Also moves into `scratch` and takes `sys.path` entries
    that overlap `private` away. Raises `SandboxUnavailable` when Landlock cannot be used.
    Returns what it did (for the log)."""
    abi = abi_version()
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        raise SandboxUnavailable(f"the sandbox's system-call filter knows x86_64 and aarch64, not {machine}")
    # Landlock confines the calling thread (and what it starts later): a thread already running
    # would stay free, and code that runs in this process can take over any of its threads.
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise SandboxUnavailable(f"{threads} threads run before the sandbox is set up; it must be the first thing the executor does")
    if abi < 1:
        raise SandboxUnavailable(
            f"Landlock is not available on this kernel ({os.uname().release}): users' functions would run with all of "
            "the worker's access; start the worker with --python-sandbox none to run them so anyway")
    problem = signal_scope_problem(abi, allow_unscoped_signals, os.uname().release)
    if problem:
        raise SandboxUnavailable(problem)
    fs = (_EXECUTE | _WRITE_FILE | _READ_FILE | _READ_DIR | _REMOVE_DIR | _REMOVE_FILE | _MAKE_CHAR | _MAKE_DIR
          | _MAKE_REG | _MAKE_SOCK | _MAKE_FIFO | _MAKE_BLOCK | _MAKE_SYM)
    if abi >= 2:
        fs |= _REFER
    if abi >= 3:
        fs |= _TRUNCATE
    if abi >= 5:
        fs |= _IOCTL_DEV
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    writes = list(write) + ([scratch] if scratch else [])
    private = list(private) + [p for p in SYSTEM_PRIVATE if os.path.lexists(p)]
    reads, dropped = rules(interpreter_folders() + list(SYSTEM_READ) + list(read), private)
    writes, dropped_writes = rules(writes, private)
    dropped += dropped_writes
    # sys.path entries that overlap a private folder (the worker's working folder, say) go too.
    sys.path[:] = [p for p in sys.path if not p or os.path.realpath(p) not in dropped]

    libc = _libc()
    attr = _RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise SandboxUnavailable(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        def allow(path, rights):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return
            try:
                if not os.path.isdir(path):
                    rights &= _FILE_RIGHTS
                rule = _PathBeneathAttr(rights & fs, fd)
                if libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                                ctypes.c_uint32(0)) != 0:
                    raise SandboxUnavailable(f"landlock_add_rule for {path} failed: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)

        for p in reads:
            allow(p, _READ)
        for p in DEVICES:
            allow(p, _READ_FILE | _WRITE_FILE)
        # Everything but device nodes and device ioctls.
        for p in writes:
            allow(p, fs & ~(_MAKE_CHAR | _MAKE_BLOCK | _IOCTL_DEV))
        if scratch:
            os.chdir(scratch)
            os.environ["TMPDIR"] = scratch
            import tempfile

            tempfile.tempdir = None   # found again from TMPDIR
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SandboxUnavailable(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
        _drop_capabilities(libc, machine)
        if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise SandboxUnavailable(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
        _install_seccomp(libc, machine, abi)
    finally:
        os.close(ruleset)
    return {"abi": abi, "read": reads, "write": writes, "dropped": dropped, "tcp": bool(net), "signals": bool(scoped)}
