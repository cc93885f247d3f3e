"""Small shared helpers (placement chosen here: the fact sheet does not name it)."""

import enum
import functools


@functools.total_ordering
class OrderedEnum(enum.Enum):
    """An Enum whose members compare by declaration order."""

    def __lt__(self, other):
        if self.__class__ is other.__class__:
            members = list(self.__class__)
            return members.index(self) < members.index(other)
        return NotImplemented
