"""Test-only stand-in for ``dgl.function``: the built-in message ``u_mul_v`` / ``u_mul_e`` and the
reduce ``sum`` (see the package docstring)."""
from collections import namedtuple

Message = namedtuple("Message", "lhs_kind lhs rhs_kind rhs out")
Reduce = namedtuple("Reduce", "op msg out")


def u_mul_v(lhs_field: str, rhs_field: str, out: str) -> Message:
    return Message("u", lhs_field, "v", rhs_field, out)


def u_mul_e(lhs_field: str, rhs_field: str, out: str) -> Message:
    return Message("u", lhs_field, "e", rhs_field, out)


def sum(msg: str, out: str) -> Reduce:  # noqa: A001 - DGL's name
    return Reduce("sum", msg, out)
