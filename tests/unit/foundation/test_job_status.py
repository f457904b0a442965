"""The transition table is the only place statuses change (issue 2 acceptance)."""

from hypothesis import given
from hypothesis import strategies as st

from loraforge.models import ACTIVE, TERMINAL, TRANSITIONS, InvalidTransition, JobStatus, can_transition, check_transition, holds_capacity

ALL = list(JobStatus)


def test_every_status_has_a_row_and_terminals_have_no_exit():
    # Given the table / When read / Then every status has a row, and exactly the terminal ones are empty
    assert set(TRANSITIONS) == set(JobStatus)
    assert TERMINAL == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    assert all(not TRANSITIONS[s] for s in TERMINAL)


def test_the_lifecycle_of_the_design_is_in_the_table():
    # Given DESIGN §4's lifecycle / Then each of its arrows is allowed
    path = [JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.SUCCEEDED]
    assert all(can_transition(a, b) for a, b in zip(path, path[1:], strict=False))
    assert can_transition(JobStatus.QUEUED, JobStatus.CANCELLED)
    assert can_transition(JobStatus.RUNNING, JobStatus.CANCELLING) and can_transition(JobStatus.CANCELLING, JobStatus.CANCELLED)
    # and a queued job is never "cancelling": it is cancelled at once
    assert not can_transition(JobStatus.QUEUED, JobStatus.CANCELLING)


@given(st.lists(st.sampled_from(ALL), min_size=1, max_size=30))
def test_no_sequence_of_operations_leaves_a_terminal_state(targets):
    # Given a job in queued and any sequence of requested status changes
    status = JobStatus.QUEUED
    reached_terminal = None
    for target in targets:
        # When each change is attempted through the one checker
        try:
            check_transition(status, target)
        except InvalidTransition:
            # Then a refused change leaves the status untouched
            assert target not in TRANSITIONS[status]
            continue
        assert target in TRANSITIONS[status]
        status = target
        if status in TERMINAL and reached_terminal is None:
            reached_terminal = status
    # Then once terminal, the job stays in that same terminal state
    if reached_terminal is not None:
        assert status == reached_terminal


@given(st.sampled_from(ALL), st.sampled_from(ALL))
def test_every_transition_outside_the_table_is_refused(current, target):
    # Given any pair of statuses / When checked / Then it passes exactly when the table lists it
    allowed = target in TRANSITIONS[current]
    try:
        check_transition(current, target)
        refused = False
    except InvalidTransition as exc:
        refused = True
        assert exc.status == 409 and exc.details["from"] == current
    assert refused is not allowed


def test_capacity_is_held_exactly_by_active_statuses():
    assert {s for s in JobStatus if holds_capacity(s)} == ACTIVE == {JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CANCELLING}
