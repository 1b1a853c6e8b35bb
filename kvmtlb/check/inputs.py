"""Which scenario files a command line names: files, directories and built-in scenario names.

`kvmtlb check` and `kvmtlb lint` take any mix of: a path to a scenario file; a directory, which
stands for its `*.toml` files in name order (not those of its subdirectories); and the name of a
built-in scenario (the file name without `.toml`, e.g. `zap-while-away`), of the default suite
or of the extended one (`kvmtlb/scenarios/extended/`: scenarios too slow for the default run). A
path that exists wins over a built-in name. Anything else is an input error (exit code 2) that
lists the names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvmtlb.model.scenario import ScenarioError

BUILTIN = Path(__file__).parent.parent / "scenarios"
EXTENDED = BUILTIN / "extended"
SUITES = ("default", "extended", "all")


def builtin_scenarios(suite: str = "default") -> list[Path]:
    """The built-in scenarios of a suite: `default` (what `kvmtlb check` runs), `extended` (the
    slower ones) or `all`."""
    default = sorted(BUILTIN.glob("*.toml"))
    extended = sorted(EXTENDED.glob("*.toml"))
    return {"default": default, "extended": extended, "all": default + extended}[suite]


def builtin_names() -> dict[str, Path]:
    return {p.stem: p for p in builtin_scenarios("all")}


def scenario_paths(args: Sequence[str | Path]) -> list[str]:
    """The scenario files `args` name, in order; raises ScenarioError for one that names none."""
    out: list[str] = []
    names = builtin_names()
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = sorted(p.glob("*.toml"))
            if not found:
                raise ScenarioError(
                    str(arg),
                    0,
                    "cannot read the file: a directory with no .toml files",
                    "give a directory that holds scenario files, or the files themselves",
                )
            out += [str(f) for f in found]
        elif p.exists() or p.suffix == ".toml" or len(p.parts) > 1:
            out.append(str(arg))  # a file (load reports one it cannot read)
        elif str(arg) in names:
            out.append(str(names[str(arg)]))
        else:
            raise ScenarioError(
                str(arg),
                0,
                "cannot read the file: no such file, directory or built-in scenario",
                f"give a path, a directory, or a built-in name: {', '.join(names)}",
            )
    return out


def scenario_paths_or_exit(args: Sequence[str | Path]) -> list[str]:
    """scenario_paths for a command: an input error is printed and exits with code 2."""
    import typer

    try:
        return scenario_paths(args)
    except ScenarioError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


__all__ = [
    "SUITES",
    "builtin_names",
    "builtin_scenarios",
    "scenario_paths",
    "scenario_paths_or_exit",
]
