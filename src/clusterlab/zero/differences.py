"""Where ``clusterlab zero`` deliberately differs from the real DeepSpeed: the one list.

Everything else is held to DeepSpeed's own code by ``tests/test_zero_deepspeed.py``
(the hostfile reader, the filters, ``launch.py``'s environment, the estimators, the
batch rule and the ``zero_optimization`` schema): the same values, or the same
rejection. A case that differs must be named here, with the reason; the conformance
test looks each case up by its ``id`` and fails on any difference not listed.
Part 5 prints this list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    id: str
    deepspeed: str
    clusterlab: str
    why: str


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "missing-hostfile",
        "a hostfile path that does not exist: a warning, then the job runs on the local GPUs only",
        "refused: 'cannot read hostfile ...'",
        "`clusterlab zero hostfile PATH` is asked about that file; there are no local GPUs to fall back on",
    ),
    Difference(
        "all-slots-zero",
        "a hostfile whose hosts all have slots=0 (and no filter): launch.py starts no process and exits 0",
        "refused: 'no slots left to run on (every host has slots=0)'",
        "a job of zero ranks is always a mistake; one host with slots=0 among others is kept, as DeepSpeed keeps it",
    ),
    Difference(
        "boolean-batch",
        "true/false as a batch size: computed with as 1/0",
        "refused, the message says DeepSpeed would read it as 1",
        "a boolean batch size is a typo, not a choice",
    ),
    Difference(
        "fractional-batch",
        "a non-integral batch value (micro-batch 0.5) passes when the product matches",
        "refused: a batch is a whole number of samples",
        "half a sample per GPU is not a batch",
    ),
    Difference(
        "boolean-stage",
        "\"stage\": true is read as stage 1 (pydantic's lax int)",
        "refused, the message says DeepSpeed would read stage 1",
        "a boolean stage is a typo, not a choice",
    ),
    Difference(
        "hjson",
        "ds_config.json is read as Hjson (comments, unquoted keys and trailing commas allowed)",
        "strict JSON",
        "the lab teaches the JSON every DeepSpeed tutorial writes; Hjson's extras are rarely meant",
    ),
    Difference(
        "offload-label",
        "the estimators format the offload device with f'{OffloadDeviceEnum.cpu:4}', which Python 3.11 and "
        "later print as 'OffloadDeviceEnum.cpu'",
        "'cpu ' (padded to 4), as DeepSpeed's documentation (docs/code-docs/source/memory.rst) shows it",
        "the numbers are DeepSpeed's to the last digit; only this label differs, and the documented form reads better",
    ),
)

BY_ID = {d.id: d for d in DIFFERENCES}


def format_differences() -> str:
    """The list as a Markdown table, for Part 5."""
    rows = ["| case | DeepSpeed | clusterlab | why |", "|---|---|---|---|"]
    rows += [f"| `{d.id}` | {d.deepspeed} | {d.clusterlab} | {d.why} |" for d in DIFFERENCES]
    return "\n".join(rows)
