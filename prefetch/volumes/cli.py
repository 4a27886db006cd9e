"""`prefetch volume ...`: manage and read data volumes from the shell."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._progress import Progress
from .errors import VolumeError
from .names import inside
from .selection import DataPoint
from .store import Volume


def add_parser(commands: Any) -> None:
    volume = commands.add_parser("volume", help="manage and read data volumes")
    sub = volume.add_subparsers(dest="action", metavar="action", required=True)
    p = sub.add_parser("init", help="create an empty volume")
    p.add_argument("path")
    p = sub.add_parser("add", help="stage every file of a folder as a data point")
    p.add_argument("path", help="the volume")
    p.add_argument("folder")
    p.add_argument("--jsonl", help="metadata as JSON lines, each with a 'name' (path relative to the folder)")
    p = sub.add_parser("commit", help="make the staged data points a version")
    p.add_argument("path")
    p.add_argument("-m", "--message", required=True)
    p = sub.add_parser("log", help="versions, newest first")
    p.add_argument("path")
    p = sub.add_parser("query", help="print the data points a query selects, as JSON lines")
    p.add_argument("url")
    p.add_argument("query")
    p = sub.add_parser("clone", help="copy the files a query selects into a folder")
    p.add_argument("url")
    p.add_argument("query")
    p.add_argument("dest")
    p.add_argument("--pattern", default="$@phase/$@id/$@name",
                   help="destination of each file: $@phase, $@id, $@name, $@ext and $field (metadata) are replaced")


def _folder_metadata(folder: Path, jsonl: str | None) -> dict[str, dict[str, Any]]:
    """Metadata by relative file name: folder.metadata.json files, then JSON lines, then <file>.metadata.json."""
    found: dict[str, dict[str, Any]] = {}
    for listing in sorted(folder.rglob("folder.metadata.json")):
        base = listing.parent.relative_to(folder)
        for name, meta in json.loads(listing.read_text()).items():
            found[str(base / name)] = dict(meta)
    if jsonl:
        for number, line in enumerate(Path(jsonl).read_text().splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                if "name" not in record:
                    raise VolumeError(f"{jsonl}:{number}: a metadata line needs a 'name'")
                found.setdefault(str(record.pop("name")), {}).update(record)
    return found


def _data_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(".metadata.json"):
            yield path


def add_folder(volume: Volume, folder: Path, jsonl: str | None) -> int:
    metadata = _folder_metadata(folder, jsonl)
    files = list(_data_files(folder))
    progress = Progress(len(files), "files")
    with volume.transaction():
        for path in files:
            name = str(path.relative_to(folder))
            meta = dict(metadata.get(name, {}))
            beside = path.with_name(path.name + ".metadata.json")
            if beside.exists():
                meta.update(json.loads(beside.read_text()))
            volume.add({path.name: path}, meta, id=name)
            progress.step()
    progress.finish()
    return len(files)


def destination(pattern: str, point: DataPoint, name: str) -> str:
    """Fill a clone pattern for one file of a data point."""
    special = {"phase": point.phase or "all", "id": point.id, "name": name,
               "ext": name.rsplit(".", 1)[1] if "." in name else ""}

    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("@"):
            if key[1:] not in special:
                raise VolumeError(f"unknown pattern variable ${key}; use $@phase, $@id, $@name, $@ext or $field")
            return special[key[1:]]
        value: Any = point.metadata
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return "none" if value is None else str(value)

    return re.sub(r"\$(@?[A-Za-z_][\w.]*)", fill, pattern)


def run(args: argparse.Namespace) -> int:
    if args.action == "init":
        Volume.init(args.path).close()
        print(f"created an empty volume in {args.path}")
        return 0
    if args.action in ("add", "commit", "log"):
        with Volume.open(args.path) as volume:
            if args.action == "add":
                print(f"staged {add_folder(volume, Path(args.folder), args.jsonl)} data points")
            elif args.action == "commit":
                print(volume.commit(args.message))
            else:
                for v in volume.log():
                    print(f"{v['id']}  {v['count']:>9} data points  {v['message']}")
        return 0
    with Volume.open(args.url) as volume:
        result = volume.query(args.query)
        if args.action == "query":
            for point in result:
                print(json.dumps({"id": point.id, "phase": point.phase, "metadata": point.metadata,
                                  "files": sorted(point.files)}))
            return 0
        dest = Path(args.dest)
        dest.mkdir(parents=True, exist_ok=True)
        progress = Progress(len(result), "data points")
        for point in result:
            for name, local in volume.files(point).items():
                target = inside(dest, destination(args.pattern, point, name),
                                f"clone: data point {point.id!r}, file {name!r}: --pattern {args.pattern!r} gives")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, target)
                target.with_name(target.name + ".metadata.json").write_text(json.dumps(point.metadata, indent=1))
            progress.step()
        progress.finish()
        print(f"cloned {len(result)} data points of version {result.version[:12]} into {dest}")
    return 0
