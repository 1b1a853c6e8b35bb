"""Typed exceptions for misuse of the hardware model's API.

Whatever the ISA defines (VMfailInvalid, VMfailValid(n), #GP, #UD, a page fault, a VM exit) is an
architectural outcome the model returns as a value, never a Python exception. These exceptions
are for callers that ask the model something it does not model: an unaligned or out-of-range
address, an unknown event, a value the scenario's entry universe was not built for. They are raised
before any state changes; the model's values are immutable, so a caller's state is never corrupted.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class: the caller asked the model something it does not model."""


class AddressError(ModelError):
    """An address that is unaligned, out of range, or names no slot of the layout."""


class UnknownEvent(ModelError):
    """An event the processor model does not know."""


class OutsideUniverse(ModelError):
    """A cached entry or memory value the scenario's universe was not enumerated for.

    The universe of entries is enumerated when a scenario loads (so MAY-sets can be bitmasks with a
    stable encoding); reaching an entry outside it means the caller wrote a value it did not
    declare. Raising is the only sound option: dropping the entry could hide a stale translation.
    """
