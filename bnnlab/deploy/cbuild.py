"""Building the exported C: the host demo, freestanding images for Arm Cortex-M, and the
flash and RAM the model needs on each target, read from the compiler's own section sizes.

Every target builds the same way, so the figures compare: ``bnn_model.c`` and a tiny
entry point (``bnn_entry.c``, which runs the model on a static input and spins) are
compiled with ``-Os``, one section per function and array, and linked without a C library
or start-up files (``-nostdlib -nostartfiles``, unused sections dropped); ``libgcc``
supplies what the processor lacks: the popcount of a word (``__popcountsi2``: no Cortex-M
and no baseline x86-64 has a popcount instruction), and on the Cortex-M0+, which has no
floating-point unit, the float multiply, add, compare and int-to-float of the first and
last layers (and of a graph's real-valued tensors). Nothing divides but by powers of two (shifts): the M0+ has no divide
instruction, and the image links no division routine. Every array is accessed at its own
type's alignment, so the M0+'s lack of unaligned loads never matters.

The figures, for a linked image:

* flash = ``text`` + ``data`` as ``size`` counts them: code, const tables (weights,
  thresholds, scales, class names) and the initial values of initialized variables
  (the model has none);
* RAM = ``data`` + ``bss`` + a stack bound. ``bss`` holds the activation buffers (a
  stack's two, ``bnn_buf0``/``bnn_buf1``, sized from the model: block i writes buffer
  i % 2, which holds the largest output among its blocks, ceil(channels / 32) 32-bit words
  per pixel; a graph's two arenas ``bnn_bits``/``bnn_vals``, as large as the peak of its
  tensor plan, see :mod:`bnnlab.deploy.cgraph`), the input and the logits that the entry
  point holds for the caller. The stack bound is
  the sum of every function's frame as gcc's ``-fstack-usage`` reports it: the deepest
  call chain cannot exceed it (nothing recurses). libgcc's helpers are not compiled here
  and their few pushed registers are not counted.

The ``Makefile`` written beside the sources runs the very commands :func:`commands`
returns (``make cortex-m0plus``, ``make cortex-m4``, ``make host-size``), so the sizes
``bnnlab export --c`` prints are what ``make`` and ``size`` show.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUILD_PRODUCTS", "ENTRY_SOURCE", "TARGETS", "Target", "build_c", "commands",
           "makefile", "measure", "measure_all", "missing_tools"]

STRICT = ("-std=c99", "-Wall", "-Wextra", "-Werror")
DEMO_FLAGS = (*STRICT, "-O2")
SIZE_FLAGS = ("-Os", "-ffunction-sections", "-fdata-sections", "-fstack-usage")
LINK_FLAGS = ("-nostdlib", "-nostartfiles", "-Wl,--gc-sections", "-Wl,-e,bnn_entry")
ARM_PREFIX = "arm-none-eabi-"
DEBIAN_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi"


@dataclass(frozen=True)
class Target:
    name: str  # the make target
    title: str
    prefix: str  # of gcc and size: "" on the host
    cflags: tuple[str, ...]  # the processor
    extra_cflags: tuple[str, ...] = ()
    extra_ldflags: tuple[str, ...] = ()

    @property
    def cc(self) -> str:
        return f"{self.prefix}gcc"

    @property
    def size(self) -> str:
        return f"{self.prefix}size"


TARGETS = {
    "host": Target("host-size", f"host ({platform.machine() or 'unknown'})", "", (),
                   # unwinding tables and a build id are not what a microcontroller carries
                   ("-fno-asynchronous-unwind-tables",), ("-static", "-Wl,--build-id=none")),
    "cortex-m0plus": Target("cortex-m0plus", "Cortex-M0+", ARM_PREFIX,
                            ("-mcpu=cortex-m0plus", "-mthumb")),
    "cortex-m4": Target("cortex-m4", "Cortex-M4F", ARM_PREFIX,
                        ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")),
}

ENTRY_SOURCE = """/* A freestanding entry point, for measuring what the model needs on a target: it runs
 * the model on a static input, again and again. Firmware calls bnn_infer() itself.
 * Built and linked without a C library by `make cortex-m0plus` / `make cortex-m4`. */
#include "bnn_model.h"

bnn_input_t bnn_entry_input[BNN_INPUT_SIZE];
float bnn_entry_logits[BNN_NUM_OUTPUTS];
volatile int bnn_entry_class;

void bnn_entry(void);

void bnn_entry(void)
{
    for (;;) {
        bnn_entry_class = bnn_infer(bnn_entry_input, bnn_entry_logits);
    }
}
"""


def _products(key: str) -> tuple[str, ...]:
    return (f"bnn-{key}.elf", f"bnn_model-{key}.o", f"bnn_entry-{key}.o",
            f"bnn_model-{key}.su", f"bnn_entry-{key}.su")


# What the Makefile builds: an export removes them, so a stale build never outlives its sources.
BUILD_PRODUCTS = ("bnn_demo", "bnn_model.o", "bnn_model.su",
                  *(p for key in TARGETS for p in _products(key)))


def commands(key: str, prefix: str | None = None) -> list[list[str]]:
    """The compile, compile and link commands of target ``key`` (run in the export folder)."""
    t = TARGETS[key]
    cc = f"{t.prefix if prefix is None else prefix}gcc"
    elf, model_o, entry_o, *_ = _products(key)
    flags = [*t.cflags, *STRICT, *SIZE_FLAGS, *t.extra_cflags]
    return [[cc, *flags, "-c", "-o", model_o, "bnn_model.c"],
            [cc, *flags, "-c", "-o", entry_o, "bnn_entry.c"],
            [cc, *t.cflags, *LINK_FLAGS, *t.extra_ldflags, "-o", elf, entry_o, model_o, "-lgcc"]]


def makefile() -> str:
    """The exported ``Makefile``: the host demo (the default) and a size build per target."""
    lines = ["CC ?= gcc", f"CFLAGS ?= {' '.join(DEMO_FLAGS)}", f"ARM_PREFIX ?= {ARM_PREFIX}", "",
             "bnn_demo: main.c bnn_model.c bnn_model.h",
             "\t$(CC) $(CFLAGS) -o $@ main.c bnn_model.c", "",
             "# Size builds: the model, its inference and bnn_entry.c linked without a C",
             "# library; `size` prints flash (text + data) and static RAM (data + bss); the",
             "# .su files list each function's stack frame.",
             f".PHONY: {' '.join(t.name for t in TARGETS.values())} clean", ""]
    for key, t in TARGETS.items():
        prefix = "$(ARM_PREFIX)" if t.prefix == ARM_PREFIX else t.prefix
        elf = _products(key)[0]
        lines += [f"{t.name}: {elf}", f"\t{prefix}size {elf}", "",
                  f"{elf}: bnn_model.c bnn_model.h bnn_entry.c"]
        lines += ["\t" + " ".join(cmd) for cmd in commands(key, prefix)]
        lines.append("")
    lines += ["clean:", f"\trm -f {' '.join(BUILD_PRODUCTS)}", ""]
    return "\n".join(lines)


def missing_tools(key: str) -> str | None:
    """Why target ``key`` cannot be built here (one line), or None."""
    t = TARGETS[key]
    for tool in (t.cc, t.size):
        if shutil.which(tool) is None:
            hint = f" (Debian: apt-get install {DEBIAN_PACKAGES})" if t.prefix == ARM_PREFIX else ""
            return f"{tool} is not installed{hint}"
    return None


def _sections(size_tool: str, path: Path) -> dict[str, int]:
    text = subprocess.run([size_tool, "-A", str(path)], check=True, capture_output=True,
                          text=True).stdout
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = out.get(parts[0], 0) + int(parts[1])
    return out


def _berkeley(size_tool: str, path: Path) -> tuple[int, int, int]:
    """(text, data, bss) as ``size`` prints them by default."""
    lines = subprocess.run([size_tool, str(path)], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return text, data, bss


def _stack(folder: Path, key: str) -> tuple[int, bool]:
    """The sum of the frames -fstack-usage reports, and whether every one is static."""
    total, static = 0, True
    for su in _products(key)[3:]:
        for line in (folder / su).read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                total += int(parts[1])
                static = static and parts[2].strip() == "static"
    return total, static


def measure(outdir: str | os.PathLike, key: str) -> dict:
    """Build target ``key`` from the sources in ``outdir`` (in a temporary copy: ``outdir``
    is left as it is) and return its sizes in bytes: ``code`` (.text), ``rodata``, ``text``,
    ``data``, ``bss`` (as ``size`` counts them), ``stack_bound``, ``flash``, ``ram``,
    ``helpers`` (libgcc routines linked in). Raises ``RuntimeError`` naming a missing
    tool, ``subprocess.CalledProcessError`` (with the compiler's message) on a failed build."""
    if problem := missing_tools(key):
        raise RuntimeError(problem)
    t = TARGETS[key]
    src = Path(outdir)
    with tempfile.TemporaryDirectory(prefix=f"bnn-{key}-") as tmp:
        folder = Path(tmp)
        for name in ("bnn_model.c", "bnn_model.h", "bnn_entry.c"):
            shutil.copyfile(src / name, folder / name)
        for cmd in commands(key):
            subprocess.run(cmd, cwd=folder, check=True, capture_output=True, text=True)
        elf = folder / _products(key)[0]
        text, data, bss = _berkeley(t.size, elf)
        sections = _sections(t.size, elf)
        stack, static = _stack(folder, key)
        nm = shutil.which(f"{t.prefix}nm")
        helpers = []
        if nm:
            syms = subprocess.run([nm, str(elf)], check=True, capture_output=True,
                                  text=True).stdout.split("\n")
            helpers = sorted({s.split()[-1] for s in syms if s.split()[-1:] and
                              s.split()[-1].startswith(("__aeabi_", "__popcount", "__div",
                                                        "__udiv", "__mod", "__umod"))})
    return {"target": key, "title": t.title, "compiler": _version(t.cc),
            "code": sum(v for k, v in sections.items() if k.startswith(".text")),
            "rodata": sum(v for k, v in sections.items() if k.startswith(".rodata")),
            "text": text, "data": data, "bss": bss, "stack_bound": stack,
            "stack_static": static, "flash": text + data, "ram": data + bss + stack,
            "helpers": helpers}


def _version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "-dumpfullversion", "-dumpversion"], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return cc
    return f"{cc} {out.stdout.strip()}"


def measure_all(outdir: str | os.PathLike, keys=tuple(TARGETS)) -> dict[str, dict | str]:
    """:func:`measure` for each target, in parallel; a target that cannot be measured maps
    to one line saying why (a missing tool, the compiler's first error line)."""
    def one(key):
        try:
            return measure(outdir, key)
        except RuntimeError as exc:
            return str(exc)
        except subprocess.CalledProcessError as exc:
            first = (exc.stderr or exc.stdout or "").strip().splitlines()[:1]
            return f"{TARGETS[key].cc} failed: {first[0] if first else exc}"

    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        return dict(zip(keys, pool.map(one, keys)))


def build_c(outdir: str | os.PathLike, cc: str = "gcc") -> Path:
    """Compile the example program with the strict flags; returns the executable's path."""
    out = Path(outdir)
    exe = out / "bnn_demo"
    subprocess.run([cc, *DEMO_FLAGS, "-o", str(exe), str(out / "main.c"), str(out / "bnn_model.c")],
                   check=True, capture_output=True, text=True)
    return exe
