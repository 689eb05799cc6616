"""Grading limits: time, memory, processes and output, with defaults that suit the course.

Every graded notebook must finish in grading mode in well under 30 s on a 2-core CPU, so a cell
gets 30 s and a whole notebook (kernel start included) 120 s; an instructor raises them with
``--cell-timeout`` / ``--notebook-timeout``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

GiB = 2 ** 30
MiB = 2 ** 20


@dataclass
class Limits:
    cell_timeout: int = 30                 # s per cell, then the kernel is interrupted
    notebook_timeout: int = 120            # s wall time for the whole sandbox, then it is killed
    interrupt_grace_seconds: float = 3.0   # a kernel still busy this long after an interrupt is killed
    memory_bytes: int = 4 * GiB            # address space per process (RLIMIT_AS)
    cpu_seconds: int = 240                 # CPU time per process (RLIMIT_CPU)
    max_processes: int = 64                # processes + threads of the sandbox's uid (RLIMIT_NPROC)
    max_file_bytes: int = 64 * MiB         # largest file it may write (RLIMIT_FSIZE)
    tmp_bytes: int = 256 * MiB             # size of its private /tmp
    max_output_bytes_per_cell: int = 100_000   # text kept per cell in the graded notebook
    max_output_lines_per_cell: int = 800       # lines kept per cell (below nbgrader's LimitOutput, 1000,
                                               # which would otherwise drop our truncation note)
    max_image_bytes: int = 2 * MiB         # larger images are replaced by a note

    def as_dict(self) -> dict:
        return asdict(self)
