"""The staleness gate after a resume is rebuilt from the journals and the checkpoint's step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from unirl_stream.api import UserInputError
from unirl_stream.pipeline.coordinator import Coordinator, ResumePoint


def _saturated_run_dir(run_dir: Path, started: int, trained_groups: int) -> None:
    """What a run leaves when it ends with its gate full: ``started`` journaled groups of
    4, the first ``trained_groups`` trained, the rest closed out as dropped at the end."""
    run_dir.mkdir(parents=True)
    with open(run_dir / "groups.jsonl", "w") as g, open(run_dir / "ledger.jsonl", "w") as led:
        for pos in range(started):
            gid = f"p:{pos % 3}@{pos}"
            g.write(json.dumps({"group": gid, "position": pos, "prompt_id": f"p:{pos % 3}", "size": 4,
                                "version": pos // 2}) + "\n")
            for k in range(4):
                status = "trained" if pos < trained_groups else "dropped"
                led.write(json.dumps({"sample_id": f"{gid}::sample:{k}", "status": status}) + "\n")


def _coordinator(run_dir: Path, resume: ResumePoint | None, **kw) -> Coordinator:
    return Coordinator(str(run_dir), ["p:0", "p:1", "p:2"], 1, False, 4, groups_per_step=2,
                       publish_every=1, max_staleness=1, resume=resume, **kw)


def _starts(c: Coordinator) -> list[int]:
    got = []
    while (t := c.start_group("rollout/0")) is not None:
        got.append(t.position)
    return got


@pytest.mark.parametrize(("resume", "dropped"), [(ResumePoint(step=4, version=4), 4), (None, 12)])
def test_resume_from_a_saturated_gate_can_start_groups(tmp_path, resume, dropped):
    # The first run ended at step 4 / version 4 with its gate full: (4 + 1 + 1) x 2 = 12 groups
    # started, 8 trained, 4 closed out. Before the fix, the allowance stayed 12: a deadlock.
    _saturated_run_dir(tmp_path / "run", started=12, trained_groups=8)
    c = _coordinator(tmp_path / "run", resume)
    version = resume.version if resume else 0
    g = c.gate()
    assert (g.position, g.version, g.dropped_groups) == (12, version, dropped)
    c.publish(version, [b"weights"])
    # exactly what a fresh run at this version may start: (eta + 1) x groups per version
    assert _starts(c) == [12, 13, 14, 15]
    c.publish(version + 1, [b"weights"])
    assert _starts(c) == [16, 17]
    c.close()


def test_a_second_coordinator_cannot_write_the_same_journals(tmp_path):
    first = _coordinator(tmp_path / "run", None)
    with pytest.raises(UserInputError, match=f"in use by pid {os.getpid()} on host .*coordinator"):
        _coordinator(tmp_path / "run", None, journal_wait_s=0.3)
    first.close()
    _coordinator(tmp_path / "run", None, journal_wait_s=0.3).close()  # free again once closed
