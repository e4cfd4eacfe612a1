#!/usr/bin/env python3
"""Generates seccomp/src/tables/*.rs, the syscall-name tables, from the kernel's uapi headers.

Run from the repository root:

    python3 seccomp/tables/generate.py [INCLUDE_ROOT] [--version V] [--origin O]

INCLUDE_ROOT is the directory holding `asm-generic/` and `x86_64-linux-gnu/` (default: the
system's /usr/include, described by `dpkg-query` and /etc/os-release). The tables are currently
generated from Debian forky's linux-libc-dev, which is newer than the build machines' own (the
whole point: a 6.1 header set does not know cachestat, fchmodat2, futex_wake, mseal, ...). To
refetch it without touching the system's apt configuration or installing anything:

    mkdir -p /tmp/apt-forky/lists/partial /tmp/apt-forky/cache/archives/partial /tmp/apt-forky/work
    echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
        <the machine's Debian mirror> forky main' > /tmp/apt-forky/sources.list
    APT="-o Dir::Etc::SourceList=/tmp/apt-forky/sources.list -o Dir::Etc::SourceParts=/dev/null
         -o Dir::State::Lists=/tmp/apt-forky/lists -o Dir::Cache=/tmp/apt-forky/cache"
    apt-get $APT update
    (cd /tmp/apt-forky/work && apt-get $APT download linux-libc-dev)
    dpkg-deb -x /tmp/apt-forky/work/linux-libc-dev_*.deb /tmp/apt-forky/root
    python3 seccomp/tables/generate.py /tmp/apt-forky/root/usr/include --origin "Debian forky"

(use the mirror host of the machine's /etc/apt/sources.list; trixie works the same way.) For an
extracted package the version is read from its changelog.Debian.gz; --version overrides it.

Each table is the set of `__NR_<name>` macros of one header (and for 32-bit Arm the
`__ARM_NR_<name>` ones), expanded by the C preprocessor. For
aarch64 that is `aarch64-linux-gnu/asm/unistd_64.h` (generated from arch/arm64's syscall.tbl
since Linux 6.11) when the header set has it, else the generic table with the same
`__ARCH_WANT_*` switches as the old arch/arm64/include/uapi/asm/unistd.h.
"""

import argparse
import gzip
import re
import subprocess
import sys
from pathlib import Path

SYSTEM_INCLUDE = Path("/usr/include")
OUT = Path(__file__).resolve().parent.parent / "src" / "tables"

GENERIC_AARCH64_FLAGS = [
    "-D__BITS_PER_LONG=64",
    "-D__ARCH_WANT_RENAMEAT",
    "-D__ARCH_WANT_NEW_STAT",
    "-D__ARCH_WANT_SET_GET_RLIMIT",
    "-D__ARCH_WANT_TIME32_SYSCALLS",
    "-D__ARCH_WANT_SYS_CLONE3",
    "-D__ARCH_WANT_MEMFD_SECRET",
]

# (module, [(header, multiarch include dir, extra preprocessor flags), ...], doc); the first
# header that exists under the include root is used.
TABLES = [
    ("x86_64", [("x86_64-linux-gnu/asm/unistd_64.h", "x86_64-linux-gnu", [])], "x86_64 (AUDIT_ARCH_X86_64)"),
    ("x86", [("x86_64-linux-gnu/asm/unistd_32.h", "x86_64-linux-gnu", [])], "i386 (AUDIT_ARCH_I386)"),
    (
        "x32",
        [("x86_64-linux-gnu/asm/unistd_x32.h", "x86_64-linux-gnu", ["-D__X32_SYSCALL_BIT=0x40000000"])],
        "x32 (AUDIT_ARCH_X86_64 with __X32_SYSCALL_BIT)",
    ),
    (
        "aarch64",
        [
            ("aarch64-linux-gnu/asm/unistd_64.h", "aarch64-linux-gnu", []),
            ("asm-generic/unistd.h", "x86_64-linux-gnu", GENERIC_AARCH64_FLAGS),
        ],
        "aarch64 (AUDIT_ARCH_AARCH64)",
    ),
    (
        "arm",
        [("arm-linux-gnueabihf/asm/unistd.h", "arm-linux-gnueabihf", ["-D__ARM_EABI__"])],
        "32-bit Arm, EABI (AUDIT_ARCH_ARM), with the Arm-private calls (`__ARM_NR_*`)",
    ),
]

# Macro prefixes that name syscalls: `__NR_<name>`, and on 32-bit Arm its private calls
# `__ARM_NR_<name>` (breakpoint, cacheflush, set_tls, ...), which libseccomp names the same way.
PREFIXES = ("__NR_", "__ARM_NR_")

# Macros that look like syscalls but are table bookkeeping.
NOT_SYSCALLS = {"syscalls", "arch_specific_syscall"}


def system_libc_dev_version():
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "linux-libc-dev"],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def system_origin():
    try:
        fields = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
    except OSError:
        return None
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    name = fields.get("NAME", "").strip('"').split()[0:1]
    return " ".join(name + [codename]).strip() or None


def extracted_libc_dev_version(include):
    """The version in the changelog of a linux-libc-dev extracted with `dpkg-deb -x`."""
    changelog = include.parent / "share" / "doc" / "linux-libc-dev" / "changelog.Debian.gz"
    try:
        with gzip.open(changelog, "rt") as f:
            m = re.match(r"\S+ \(([^)]+)\)", f.readline())
    except OSError:
        return "unknown"
    return m.group(1) if m else "unknown"


def macros(include, header, multiarch, flags):
    out = subprocess.run(
        ["cpp", "-dM", "-nostdinc", "-I", str(include), "-I", str(include / multiarch)]
        + flags
        + ["-include", str(include / header), "/dev/null"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    defs = {}
    for line in out.splitlines():
        m = re.match(r"#define (\w+) (.*)$", line)
        if m:
            defs[m.group(1)] = m.group(2).strip()
    return defs


def evaluate(expr, defs, depth=0):
    if depth > 20:
        raise ValueError(f"macro recursion in {expr}")
    expanded = re.sub(
        r"[A-Za-z_]\w*",
        lambda m: f"({evaluate(defs[m.group(0)], defs, depth + 1)})" if m.group(0) in defs else m.group(0),
        expr,
    )
    if not re.fullmatch(r"[0-9a-fA-FxX+()\s]+", expanded):
        raise ValueError(f"cannot evaluate {expr!r} -> {expanded!r}")
    return int(eval(expanded, {"__builtins__": {}}))  # digits, x, + and parentheses only


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "include",
        nargs="?",
        type=Path,
        default=SYSTEM_INCLUDE,
        help="header root holding asm-generic/ and x86_64-linux-gnu/ (default: /usr/include)",
    )
    parser.add_argument("--version", help="linux-libc-dev version to record (default: detected)")
    parser.add_argument("--origin", help='where the package came from, e.g. "Debian forky"')
    args = parser.parse_args()

    include = args.include.resolve()
    system = include == SYSTEM_INCLUDE
    version = args.version or (system_libc_dev_version() if system else extracted_libc_dev_version(include))
    origin = args.origin or (system_origin() if system else None)
    package = f"linux-libc-dev {version}" + (f" ({origin})" if origin else "")

    OUT.mkdir(parents=True, exist_ok=True)
    for module, candidates, doc in TABLES:
        found = [c for c in candidates if (include / c[0]).is_file()]
        if not found:
            sys.exit(f"{module}: none of {[c[0] for c in candidates]} under {include}")
        header, multiarch, flags = found[0]
        defs = macros(include, header, multiarch, flags)
        table = {}
        for name, value in defs.items():
            prefix = next((p for p in PREFIXES if name.startswith(p)), None)
            if prefix is None:
                continue
            syscall = name[len(prefix):]
            # bookkeeping, and the upper-case bases and masks (__NR_SYSCALL_BASE, __ARM_NR_BASE)
            if syscall in NOT_SYSCALLS or syscall.isupper():
                continue
            table[syscall] = evaluate(value, defs)
        rows = sorted(table.items())
        lines = [
            f"//! Syscall numbers for {doc}.",
            "//!",
            f"//! Generated by seccomp/tables/generate.py from usr/include/{header}",
            f"//! of {package}; do not edit by hand.",
            "",
            "/// `(name, number)` pairs sorted by name, for binary search.",
            "pub(crate) static SYSCALLS: &[(&str, u32)] = &[",
        ]
        lines += [f'    ("{n}", {v:#x}),' if v >= 0x40000000 else f'    ("{n}", {v}),' for n, v in rows]
        lines.append("];")
        (OUT / f"{module}.rs").write_text("\n".join(lines) + "\n")
        print(f"{module}: {len(rows)} syscalls from {header} of {package}", file=sys.stderr)


if __name__ == "__main__":
    main()
