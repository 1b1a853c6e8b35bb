"""Checkpoints of a partitioned search (kvmtlb.check.parallel), as plain data.

A checkpoint is a directory:

- `manifest.json`: the format and kvmtlb version, what the search is of (scenario name and the
  SHA-256 of its file, policy, configuration, and the fingerprint of the initial world, which
  changes when the model does), the counts at the level boundary it was taken at, and per
  partition the name, SHA-256 and section sizes of its file;
- `part-P.gG.bin` (partition P, generation G): the partition's fingerprint table as raw arrays of
  machine integers (the open-addressing keys, each state's parent reference and action index)
  and its frontier (state indices and their ranks).

Nothing in it is code: loading reads JSON and integer arrays, checks every size, hash and
reference, and rebuilds the frontier's worlds by replaying, from the initial world, the actions
recorded along the parent links (each checked against the steps enabled where it is taken; each
rebuilt world's fingerprint must be in the table). A checkpoint is replaced atomically: the new
generation's files are written first, then the manifest (written to a temporary name and
renamed), then the old generation's files are removed; a crash at any point leaves a whole
checkpoint. A corrupt checkpoint, or one of another scenario, policy, configuration or version,
raises CheckpointError (exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from array import array
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT = "kvmtlb-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
SECTIONS = (("keys", "Q"), ("parent", "q"), ("action", "H"), ("frontier", "q"), ("ranks", "q"))


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed: the message names the directory and the fix."""


def kvmtlb_version() -> str:
    try:
        return metadata.version("kvmtlb")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


@dataclass
class Meta:
    """The counts of a search at the level boundary a checkpoint is taken at."""

    parts: int
    states: int
    transitions: int
    depth: int
    frontier: int
    finished: bool
    seconds: float
    last: tuple[int, int] | None
    root: int  # the initial world's fingerprint


@dataclass
class State:
    """A loaded checkpoint, ready for parallel.Group.load."""

    parts: int
    data: list[dict[str, Any]]
    plans: list[list[list[tuple[int, int, int]]]]
    states: int
    transitions: int
    depth: int
    frontier: int
    finished: bool
    seconds: float
    last: tuple[int, int] | None


def identity(
    scenario_name: str, scenario_file: str, policy: str, spec: str, config: dict[str, Any]
) -> dict[str, Any]:
    """What a checkpoint is of: resuming it for anything else is refused."""
    try:
        digest = hashlib.sha256(Path(scenario_file).read_bytes()).hexdigest()
    except OSError:
        digest = ""
    return {
        "scenario": scenario_name,
        "scenario_sha256": digest,
        "policy": policy,
        "policy_spec": spec,
        "config": config,
    }


def prepare(directory: str) -> None:
    """A directory for a new checkpoint: created if missing; one that holds a checkpoint is
    refused (resume it, or remove it)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"--checkpoint {directory}: is a file; give a directory")
    if (d / MANIFEST).exists():
        raise CheckpointError(
            f"--checkpoint {directory}: holds a checkpoint already; continue it with "
            f"--resume {directory}, or remove it"
        )
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"--checkpoint {directory}: cannot create it ({e.strerror or e})"
        ) from None


def save(directory: str, ident: dict[str, Any], dumps: list[dict[str, Any]], meta: Meta) -> None:
    """Write a checkpoint of `dumps` (parallel.Partition.dump of every partition); a file system
    error is a CheckpointError naming the directory."""
    try:
        _save(directory, ident, dumps, meta)
    except OSError as e:
        raise CheckpointError(
            f"--checkpoint {directory}: cannot write the checkpoint ({e.strerror or e}); give a "
            "writable directory with room for it"
        ) from None


def _save(directory: str, ident: dict[str, Any], dumps: list[dict[str, Any]], meta: Meta) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    old = _read_manifest(d) if (d / MANIFEST).exists() else None
    gen = (old.get("generation", 0) + 1) if isinstance(old, dict) else 1
    files = []
    for p, dump in enumerate(dumps):
        name = f"part-{p}.g{gen}.bin"
        h = hashlib.sha256()
        sizes = {}
        with open(d / name, "wb") as f:
            for section, _ in SECTIONS:
                blob = dump[section]
                f.write(blob)
                h.update(blob)
                sizes[section] = len(blob)
            f.flush()
            os.fsync(f.fileno())
        files.append({"name": name, "sha256": h.hexdigest(), "mask": dump["mask"], **sizes})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kvmtlb": kvmtlb_version(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "byteorder": sys.byteorder,
        "identity": ident,
        "root": meta.root,
        "generation": gen,
        "parts": meta.parts,
        "states": meta.states,
        "transitions": meta.transitions,
        "depth": meta.depth,
        "frontier": meta.frontier,
        "finished": meta.finished,
        "seconds": round(meta.seconds, 3),
        "last": list(meta.last) if meta.last is not None else None,
        "files": files,
    }
    tmp = d / (MANIFEST + ".tmp")
    with open(tmp, "w") as out:
        json.dump(manifest, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, d / MANIFEST)
    keep = {f["name"] for f in files}
    for stale in d.glob("part-*.bin"):
        if stale.name not in keep:
            with contextlib.suppress(OSError):
                stale.unlink()


def _read_manifest(d: Path) -> Any:
    try:
        return json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _corrupt(directory: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"--resume {directory}: the checkpoint is corrupt ({what}); start again without "
        "--resume, with a new --checkpoint directory"
    )


def _int(m: dict[str, Any], key: str, directory: str, low: int = 0) -> int:
    v = m.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise _corrupt(directory, f"{key!r} is {v!r}, not an integer >= {low}")
    return v


def load(directory: str | None, system: Any, ident: dict[str, Any]) -> State:
    """Read and check the checkpoint in `directory` for `system` (whose identity is `ident`);
    the frontier's replay plans are computed here, the replay itself is the partitions'."""
    from kvmtlb.check.explorer import canonicalizer

    if directory is None:
        raise CheckpointError("--resume needs a checkpoint directory")
    d = Path(directory)
    if not (d / MANIFEST).is_file():
        raise CheckpointError(
            f"--resume {directory}: no checkpoint there (no {MANIFEST}); give the directory "
            "a run wrote with --checkpoint"
        )
    m = _read_manifest(d)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _corrupt(directory, f"{MANIFEST} is not a kvmtlb checkpoint manifest")
    if m.get("version") != VERSION:
        raise CheckpointError(
            f"--resume {directory}: checkpoint format version {m.get('version')!r}, this "
            f"kvmtlb reads version {VERSION}; start again without --resume"
        )
    here = {
        "kvmtlb": kvmtlb_version(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "byteorder": sys.byteorder,
    }
    for key, value in here.items():
        if m.get(key) != value:
            raise CheckpointError(
                f"--resume {directory}: the checkpoint was written by {key} {m.get(key)!r}, this "
                f"is {value!r}; resume it with that one, or start again without --resume"
            )
    theirs = m.get("identity")
    if not isinstance(theirs, dict):
        raise _corrupt(directory, "no identity")
    differ = [k for k in ident if theirs.get(k) != ident[k]]
    if differ:
        k = differ[0]
        raise CheckpointError(
            f"--resume {directory}: the checkpoint is of another run ({k} {theirs.get(k)!r}, "
            f"this run's is {ident[k]!r}); resume it with the scenario, policy and "
            "configuration it was written for, or start again without --resume"
        )
    if m.get("root") != canonicalizer(system).fingerprint(system.initial):
        raise CheckpointError(
            f"--resume {directory}: the initial state differs from the checkpoint's (the model "
            "changed since it was written); start again without --resume"
        )
    parts = _int(m, "parts", directory, 1)
    files = m.get("files")
    if not isinstance(files, list) or len(files) != parts:
        raise _corrupt(directory, f"{parts} partitions but files {files!r}")
    data: list[dict[str, Any]] = []
    arrays: list[dict[str, array[int]]] = []
    for p, entry in enumerate(files):
        if (
            not isinstance(entry, dict)
            or entry.get("name") != f"part-{p}.g{m.get('generation')}.bin"
        ):
            raise _corrupt(directory, f"partition {p}'s entry {entry!r}")
        try:
            blob = (d / entry["name"]).read_bytes()
        except OSError as e:
            raise _corrupt(directory, f"{entry['name']}: {e.strerror or e}") from None
        if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
            raise _corrupt(directory, f"{entry['name']} does not match its SHA-256")
        mask = _int(entry, "mask", directory)
        if (mask + 1) & mask:
            raise _corrupt(directory, f"{entry['name']}: table size {mask + 1}")
        dump: dict[str, Any] = {"mask": mask}
        arrs: dict[str, array[int]] = {}
        at = 0
        for section, code in SECTIONS:
            n = _int(entry, section, directory)
            a = array(code)
            if n % a.itemsize or at + n > len(blob):
                raise _corrupt(directory, f"{entry['name']}: section {section} of {n} bytes")
            dump[section] = blob[at : at + n]
            a.frombytes(dump[section])
            arrs[section] = a
            at += n
        if at != len(blob) or len(arrs["keys"]) != mask + 1:
            raise _corrupt(directory, f"{entry['name']}: sizes do not add up")
        if len(arrs["parent"]) != len(arrs["action"]) or len(arrs["frontier"]) != len(
            arrs["ranks"]
        ):
            raise _corrupt(directory, f"{entry['name']}: sizes do not add up")
        data.append(dump)
        arrays.append(arrs)
    depth = _int(m, "depth", directory)
    sizes = [len(a["parent"]) for a in arrays]

    def link(ref: int) -> tuple[int, int]:
        p, i = ref % parts, ref // parts
        if ref < 0 or i >= sizes[p]:
            raise _corrupt(directory, f"reference {ref} to no state")
        return arrays[p]["parent"][i], arrays[p]["action"][i]

    plans: list[list[list[tuple[int, int, int]]]] = []
    total = 0
    for p, arrs in enumerate(arrays):
        level = set()
        for idx in arrs["frontier"]:
            if not 0 <= idx < sizes[p]:
                raise _corrupt(directory, f"frontier state {idx} of partition {p}")
            level.add(idx * parts + p)
        total += len(level)
        plan = []
        for _ in range(depth):
            steps = []
            up = set()
            for ref in level:
                parent, action = link(ref)
                steps.append((ref, parent, action))
                up.add(parent)
            plan.append(steps)
            level = up
        if level and any(link(r)[0] != -1 for r in level):
            raise _corrupt(directory, f"partition {p}'s frontier is not {depth} steps deep")
        plans.append(plan[::-1])
    frontier = _int(m, "frontier", directory)
    if frontier != total:
        raise _corrupt(directory, f"frontier of {total} states, the manifest says {frontier}")
    last = m.get("last")
    if last is not None and not (
        isinstance(last, list) and len(last) == 2 and all(isinstance(x, int) for x in last)
    ):
        raise _corrupt(directory, f"'last' is {last!r}")
    seconds = m.get("seconds")
    if not isinstance(seconds, int | float) or not isinstance(m.get("finished"), bool):
        raise _corrupt(directory, "'seconds' or 'finished'")
    return State(
        parts,
        data,
        plans,
        _int(m, "states", directory, 1),
        _int(m, "transitions", directory),
        depth,
        frontier,
        bool(m["finished"]),
        float(seconds),
        (last[0], last[1]) if last is not None else None,
    )
