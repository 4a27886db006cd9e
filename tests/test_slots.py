"""The slot table: READY in sequence order whatever order workers finish in, END right after an epoch's last batch."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prefetch._messages import End, Ready
from prefetch._muxproc.slots import Filling, SlotTable


class Owed:
    filled = 0


def filling(seq, workers, discard=False, rows=4, epoch=0):
    owed = {w: [(Owed(), rows)] for w in workers}
    return Filling(seq, epoch, seq, rows, discard, {w: [] for w in workers}, owed)


def announced(table):
    events = []
    for message in table.outbox:
        if isinstance(message, Ready):
            events += [("ready", b[1]) for b in message.batches]
        else:
            events.append(("end", message.epoch, message.batches))
    table.outbox.clear()
    return events


@given(st.permutations([(seq, w) for seq in range(5) for w in (0, 1)]))
def test_ready_goes_out_in_sequence_order_whatever_order_workers_finish_in(order):
    table = SlotTable(8)
    slots = {seq: table.assign(filling(seq, [0, 1])) for seq in range(5)}
    table.end_epoch(5, 0, 5)
    seen = []
    for seq, worker in order:
        table.filled(slots[seq], worker, {})
        seen += announced(table)
    assert seen == [("ready", s) for s in range(5)] + [("end", 0, 5)]


def test_a_repeated_filled_report_after_a_restart_is_ignored():
    table = SlotTable(2)
    slot = table.assign(filling(0, [0, 1]))
    table.filled(slot, 0, {})
    table.filled(slot, 0, {})
    assert announced(table) == [] and table.waiting_on() == {1}


def test_a_dropped_short_last_batch_frees_its_slot_without_ready():
    table = SlotTable(2)
    a = table.assign(filling(0, [0]))
    b = table.assign(filling(1, [0], discard=True))
    table.end_epoch(2, 0, 1)
    table.filled(b, 0, {})
    table.filled(a, 0, {})
    assert announced(table) == [("ready", 0), ("end", 0, 1)]
    assert list(table.free) == [b]


def test_freed_slots_raise_the_floor_below_which_no_batch_is_unconsumed():
    table = SlotTable(3)
    slots = [table.assign(filling(seq, [0])) for seq in range(3)]
    for slot in slots:
        table.filled(slot, 0, {})
    table.release([slots[1]])
    assert table.floor == 2 and table.counts() == {"slots_free": 1, "slots_filling": 0}


def test_writing_counts_the_samples_each_instance_has_in_shared_memory():
    table = SlotTable(1)
    f = filling(0, [0, 1], rows=3)
    owed = [inst for parts in f.owed.values() for inst, _ in parts]
    slot = table.assign(f)
    table.filled(slot, 1, {})
    assert [inst.filled for inst in owed] == [0, 3]


def test_an_epoch_with_no_batch_pending_ends_at_once():
    table = SlotTable(1)
    table.end_epoch(0, 3, 0)
    assert table.outbox == [End(3, 0)]
