"""An independent reference implementation of the x86 TLB rules, to check `kvmtlb.hw` against.

`kvmtlb.hw` computes MAY-sets as bitmasks, with shared `Invalidation` values, tag constructors and
a memoized walk engine. This package restates the same manual text (SDM Vol. 3A §4.10, §28.3;
APM Vol. 2 §15.16, §15.25; the event table of x86-tlb-architecture.md §2.2) a second time, as
deliberately simple, slow, concrete code that shares nothing with `kvmtlb.hw`: its own entry
record (`entries.py`), its own paging-entry decoders and walks (`walk.py`), its own processor
state, tag matching, event semantics, access check and invalidations (`processor.py`), and a
native processor over guest-physical memory (`native.py`), which the checker's guest-transparency
property uses as its reference.

It imports nothing from `kvmtlb.hw` (tests/test_oracle.py enforces it): a rule that is wrong in
the model is therefore not wrong here by construction, and the property tests that compare the
two (tests/test_oracle_property.py) or the checker's verdicts move.

Semantics: a processor of the oracle is concrete, it holds a set of entries. `Machine.fill`
caches every entry of every path of every address it may walk (the maximal run), so the set it
holds after a sequence of events is the union of what any run of that sequence may hold (fills
only add, every invalidation removes entries one by one by a predicate that can only keep more
when more is held). `ConcreteTlb` is one run with a capacity: random single-path fills and LRU
evictions.
"""
