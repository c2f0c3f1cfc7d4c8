"""Loading policy files (TOML) into validated :class:`~planner.policy.model.PolicySet` objects.

Errors name the file, the exact place (``sets.web.rules[2].match.comm``) and the problem
on one line, as a :class:`~planner.errors.PolicyError` (exit code 4 in the CLI).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from planner._input import read_input_text
from planner.errors import PolicyError
from planner.policy.model import PolicyFile, PolicySet

if TYPE_CHECKING:
    import os

_DOCS_HINT = "see docs/policies.md for the policy file format"


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _one_line(exc: ValidationError, *, prefix: str, source: str) -> PolicyError:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
    where = _loc(loc)
    where = f"{prefix}.{where}" if prefix and where else (prefix or where)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "is required"
    more = (
        f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        if len(errors) > 1
        else ""
    )
    return PolicyError(f"{source}: {where}: {msg}{more}", hint=_DOCS_HINT)


def parse_policies(text: str, *, source: str = "<policies>") -> list[PolicySet]:
    """Parse the TOML text of a policy file into its policy sets (in file order).

    Parameters
    ----------
    text
        The TOML document (``[sets.NAME]`` tables, see docs/policies.md).
    source
        Name of the file, for error messages.

    Raises
    ------
    PolicyError
        Not TOML, an unknown key, a bad value; the message names the place.

    Examples
    --------
    >>> sets = parse_policies('[sets.all]\\ndefault = "prctl"\\n')
    >>> sets[0].name, sets[0].default
    ('all', 'prctl')
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}", hint=_DOCS_HINT) from None
    except RecursionError:
        raise PolicyError(
            f"{source}: not a policy file: arrays or tables nested too deeply", hint=_DOCS_HINT
        ) from None
    try:
        pfile = PolicyFile.model_validate(doc)
    except ValidationError as exc:
        raise _one_line(exc, prefix="", source=source) from None
    out: list[PolicySet] = []
    for name, body in pfile.sets.items():
        if not isinstance(body, dict):
            raise PolicyError(f"{source}: sets.{name}: expected a table", hint=_DOCS_HINT)
        if "name" in body or "preset" in body:
            key = "name" if "name" in body else "preset"
            raise PolicyError(
                f"{source}: sets.{name}.{key}: unknown key (the set's name is its table name)",
                hint=_DOCS_HINT,
            )
        try:
            out.append(PolicySet.model_validate({**body, "name": name}))
        except ValidationError as exc:
            raise _one_line(exc, prefix=f"sets.{name}", source=source) from None
    return out


def load_policies(path: str | os.PathLike[str]) -> list[PolicySet]:
    """Read every policy set of a policy file.

    Raises
    ------
    PolicyError
        The file is missing, unreadable or invalid.
    """
    p = Path(path)
    # a regular UTF-8 file of sane size (a FIFO, a device, gzip or Latin-1: one clear line)
    text = read_input_text(p, what="policy file", error=PolicyError)
    return parse_policies(text, source=str(p))


def load_policy(path: str | os.PathLike[str], set_name: str | None = None) -> PolicySet:
    """Read one policy set from a policy file.

    Parameters
    ----------
    path
        The TOML policy file.
    set_name
        Which set; may be omitted when the file holds exactly one. ``NAME@DOMAIN`` is the
        set NAME with KSM for its security domain DOMAIN only
        (:meth:`~planner.policy.model.PolicySet.for_domain`).

    Raises
    ------
    PolicyError
        The file is invalid, has no set of that name, or holds several sets and no name
        was given (the message lists them).
    """
    sets = load_policies(path)
    names = [s.name for s in sets]
    if set_name is None:
        if len(sets) == 1:
            return sets[0]
        raise PolicyError(
            f"{path} holds {len(sets)} policy sets ({', '.join(names)})", hint="name one of them"
        )
    return select_sets(sets, [set_name], source=str(path))[0]


def select_sets(sets: list[PolicySet], names: list[str] | None, *, source: str) -> list[PolicySet]:
    """The sets named in ``names`` (all when ``None``), in the order given.

    ``NAME@DOMAIN`` selects the set NAME with KSM for its domain DOMAIN only.
    """
    if not names:
        return list(sets)
    by_name = {s.name: s for s in sets}
    out = []
    for n in names:
        base, domain = PolicySet.split_name(n)
        if base not in by_name:
            raise PolicyError(
                f"{source} has no policy set {base!r}", hint=f"sets are: {', '.join(by_name)}"
            )
        out.append(by_name[base] if domain is None else by_name[base].for_domain(domain))
    return out


def dump_policy(policy: PolicySet) -> dict[str, Any]:
    """A JSON-ready dict of a policy set (for provenance)."""
    return policy.model_dump(mode="json", exclude_defaults=False)


__all__ = ["dump_policy", "load_policies", "load_policy", "parse_policies", "select_sets"]
