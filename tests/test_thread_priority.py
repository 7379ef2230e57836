"""diskhash._thread_priority.lowered: the calling thread alone runs lower, and
gets its priority back afterwards (when the system allows raising it again)."""

from __future__ import annotations

import os
import threading

import pytest

from diskhash._thread_priority import NICE_STEP, POLICIES, lowered


def in_thread(fn):
    """Run ``fn`` in a fresh thread (so the test's own thread is never changed); its result."""
    out: list = []
    errors: list = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:      # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    if errors:
        raise errors[0]
    return out[0]


def test_nice_lowers_only_the_calling_thread_and_restores_it():
    main_tid = threading.get_native_id()
    main_nice = os.getpriority(os.PRIO_PROCESS, main_tid)

    def body():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        with lowered("nice"):
            inside = os.getpriority(os.PRIO_PROCESS, tid)
            other = os.getpriority(os.PRIO_PROCESS, main_tid)
        return before, inside, other, os.getpriority(os.PRIO_PROCESS, tid)

    before, inside, other, after = in_thread(body)
    assert inside == min(19, before + NICE_STEP) and inside > before
    assert other == main_nice                                   # the other thread is untouched
    assert after == before or (os.geteuid() != 0 and after == inside)


@pytest.mark.parametrize("policy, expected", [("batch", os.SCHED_BATCH), ("idle", os.SCHED_IDLE)])
def test_scheduler_policies_apply_to_the_calling_thread(policy, expected):
    main_tid = threading.get_native_id()
    main_policy = os.sched_getscheduler(main_tid)

    def body():
        tid = threading.get_native_id()
        before = os.sched_getscheduler(tid)
        with lowered(policy):
            inside = os.sched_getscheduler(tid)
            other = os.sched_getscheduler(main_tid)
        return before, inside, other, os.sched_getscheduler(tid)

    before, inside, other, after = in_thread(body)
    assert inside == expected and other == main_policy
    assert after == before or (os.geteuid() != 0 and after == inside)


def test_none_changes_nothing_and_a_bad_policy_is_refused():
    def body():
        tid = threading.get_native_id()
        state = (os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid))
        with lowered("none"):
            inside = (os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid))
        return state, inside

    state, inside = in_thread(body)
    assert state == inside
    assert "none" in POLICIES
    for bad in ("realtime", "", None, 3):
        with pytest.raises(ValueError, match="policy must be one of"), lowered(bad):  # type: ignore[arg-type]
            pass


def test_the_priority_comes_back_even_if_the_body_raises():
    def body():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        with pytest.raises(RuntimeError), lowered("nice"):
            raise RuntimeError("boom")
        return before, os.getpriority(os.PRIO_PROCESS, tid)

    before, after = in_thread(body)
    if os.geteuid() == 0:
        assert after == before
