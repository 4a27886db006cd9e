"""The `prefetch` command line."""

from __future__ import annotations

import argparse
import sys

from ._errors import PrefetchError
from .volumes import cli as volume_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefetch", description="Keep a training loop fed.")
    commands = parser.add_subparsers(dest="command", metavar="command")
    bench = commands.add_parser("bench", help="throughput of the engine beside its peers, on synthetic workloads")
    bench.add_argument("--workloads", default="small,image,cpu,mux,mux-rate,activation",
                       help="comma-separated subset of small, image, cpu, mux, mux-rate, activation (default: all)")
    bench.add_argument("--workers", default="2",
                       help="worker processes for prefetch and DataLoader; a list (1,2,4,8) sweeps them")
    bench.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    bench.add_argument("--quick", action="store_true", help="at most 1 s per measurement, no DataLoader sweep")
    bench.add_argument("--rounds", type=int, default=1,
                       help="run every measurement this many times, round after round; report medians and ranges "
                            "(ratios are taken within each round)")
    bench.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--plot", metavar="FILE.png", help="draw samples/s against workers (needs matplotlib)")
    bench.add_argument("--ray", action="store_true",
                       help="also run prefetch.ray.Pool, on two Ray nodes started on this machine (actors on the "
                            "trainer's node, and on another node through Ray's object store)")
    bench.add_argument("--ray-address", metavar="ADDRESS",
                       help="with --ray: use this Ray cluster instead (actors wherever it places them)")
    bench.add_argument("--device", metavar="cuda[:N]",
                       help="measure the image workload's path into this GPU instead (needs torch with CUDA)")
    volume_cli.add_parser(commands)
    doctor = commands.add_parser("doctor", help="show /dev/shm's size and use; list (and with --clean remove) "
                                               "shared memory left by dead pools")
    doctor.add_argument("--clean", action="store_true", help="unlink the segments listed")
    return parser


def _doctor(clean: bool) -> int:
    from . import _shm

    room = _shm.usage()
    if room is not None:
        free, total = room
        live = _shm.segments()
        ours = sum((_shm.SHM_DIR / name).stat().st_size for name in live if (_shm.SHM_DIR / name).exists())
        print(f"{_shm.SHM_DIR}: {total / 1e6:,.0f} MB, {(total - free) / 1e6:,.0f} MB used ({ours / 1e6:,.0f} MB "
              f"by {len(live)} prefetch segment(s)), {free / 1e6:,.0f} MB free")
        if total < 1e9:
            print("  that is small for training (Docker's default is 64 MB): docker run --shm-size=8g, or --ipc=host")
    stale = _shm.stale_segments()
    if not stale:
        print("no shared memory left by dead pools")
        return 0
    for name in stale:
        size = (_shm.SHM_DIR / name).stat().st_size
        print(f"{name}  {size / 1e6:,.1f} MB  owner pid {_shm.owner_pid(name)} is gone")
        if clean:
            _shm.unlink(name)
    print(f"{'removed' if clean else 'found'} {len(stale)} segment(s)" + ("" if clean else "; --clean removes them"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from ._bench.report import run
        from ._bench.workloads import WORKLOADS

        names = [n.strip() for n in args.workloads.split(",") if n.strip()]
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            parser.error(f"unknown workloads {unknown}; choose from {sorted(WORKLOADS)}")
        try:
            workers = [int(n) for n in args.workers.split(",") if n.strip()]
        except ValueError:
            parser.error(f"--workers takes numbers separated by commas, got {args.workers!r}")
        if not workers or min(workers) < 1:
            parser.error(f"--workers needs counts >= 1, got {args.workers!r}")
        seconds = min(args.seconds, 1.0) if args.quick else args.seconds
        if args.device:
            from ._bench import device

            results = device.run(workers[-1], seconds, args.device)
            print(f"prefetch bench --device {args.device}: image workload, {workers[-1]} workers, {seconds:g} s each")
            print(device.report(results))
            return 0
        if args.ray_address and not args.ray:
            parser.error("--ray-address needs --ray")
        if args.rounds < 1:
            parser.error(f"--rounds needs a count >= 1, got {args.rounds}")
        return run(names, workers, seconds, not args.quick, args.json, not args.no_progress, args.plot,
                   args.ray, args.ray_address, args.rounds)
    if args.command == "doctor":
        return _doctor(args.clean)
    if args.command == "volume":
        try:
            return volume_cli.run(args)
        except PrefetchError as exc:
            print(f"prefetch volume {args.action}: {exc}", file=sys.stderr)
            return 1
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
