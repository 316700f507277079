"""``clusterlab zero estimate|comm|simulate|hostfile|config``: Part 5 on the command line.

Examples::

    clusterlab zero estimate --params 7.5e9 --nodes 8 --gpus-per-node 8 --device-memory 80
    clusterlab zero estimate --params 2851M --nodes 1 --gpus-per-node 8 --largest-layer-params 32M
    clusterlab zero comm --params 7.5e9 --nodes 1,2,4,8 --gpus-per-node 8 --stage 2,3
    clusterlab zero simulate --nnodes 2 --nproc-per-node 4 --stage 3 --steps 3
    clusterlab zero hostfile examples/zero/hostfile --include worker-0@worker-1:0,2
    clusterlab zero config examples/zero/ds_config.json --world-size 8

Heavy imports (numpy) happen inside the commands, so ``clusterlab`` starts fast.
"""

from __future__ import annotations

import argparse

from ..errors import UsageError


def register(subparsers) -> None:
    zero = subparsers.add_parser("zero", help="DeepSpeed ZeRO: memory, communication, a simulated run, hostfiles, configs",
                                 description="DeepSpeed ZeRO across simulated nodes (Part 5).")
    sub = zero.add_subparsers(dest="zero_command", metavar="ZERO_COMMAND")
    sub.required = True
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("estimate", help="per-device model-state memory per ZeRO stage", formatter_class=fmt)
    p.add_argument("--params", required=True, help="model parameters, e.g. 7.5e9, 7.5B, 2851M")
    p.add_argument("--nodes", "--num-nodes", "--num_nodes", default="1", help="number of nodes")
    p.add_argument("--gpus-per-node", "--gpus_per_node", "--num-gpus", default="8", help="GPUs per node")
    p.add_argument("--stage", default="0,1,2,3", help="stages to show, e.g. 3 or 1,2")
    p.add_argument("--device-memory", "--device_memory", type=float, default=None, help="GB per device; say which stages fit")
    p.add_argument("--largest-layer-params", "--largest_layer_params", default=None,
                   help="largest layer's params, for DeepSpeed's ZeRO-3 estimator table")
    p.add_argument("--additional-buffer-factor", type=float, default=1.5, help="DeepSpeed's CPU safety factor")
    p.add_argument("--no-deepspeed", action="store_true", help="only the paper's model, not DeepSpeed's estimators")
    p.set_defaults(func=_estimate)

    p = sub.add_parser("comm", help="per-step communication volume and alpha-beta time per stage", formatter_class=fmt)
    p.add_argument("--params", required=True, help="model parameters, e.g. 7.5e9")
    p.add_argument("--nodes", default="1,2,4,8", help="node counts to compare, e.g. 1,2,4,8")
    p.add_argument("--gpus-per-node", "--gpus_per_node", default="8", help="GPUs per node")
    p.add_argument("--stage", default="0,1,2,3", help="stages to show")
    p.add_argument("--grad-accum", "--grad_accum", default="1", help="gradient accumulation steps")
    p.add_argument("--intra-bw", type=float, default=450.0, help="intra-node GB/s per direction (NVLink 4: 900 GB/s bidir.)")
    p.add_argument("--inter-bw", type=float, default=50.0, help="inter-node GB/s per direction (IB NDR 400 Gb/s)")
    p.add_argument("--intra-latency-us", type=float, default=3.0, help="intra-node latency per ring step, us")
    p.add_argument("--inter-latency-us", type=float, default=10.0, help="inter-node latency per ring step, us")
    p.set_defaults(func=_comm)

    p = sub.add_parser("simulate", help="train a small model with ZeRO on real processes under the launcher",
                       formatter_class=fmt)
    p.add_argument("--nnodes", type=int, default=2, help="simulated nodes")
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=4, help="ranks per node")
    from .worker import add_model_args

    add_model_args(p)
    p.add_argument("--timeout", type=float, default=90.0, help="seconds before the whole job is stopped")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="write the checks and every rank's report (slices, bytes held, timed collectives) as JSON")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("hostfile", help="parse a DeepSpeed hostfile and show every rank's environment", formatter_class=fmt)
    p.add_argument("hostfile", help="path of the hostfile ('worker-0 slots=4' lines)")
    p.add_argument("--include", "-i", default="", help="e.g. worker-0@worker-1:0,2")
    p.add_argument("--exclude", "-e", default="", help="e.g. worker-1:0")
    p.add_argument("--num-nodes", "--num_nodes", type=int, default=-1, help="use only the first N hosts")
    p.add_argument("--num-gpus", "--num_gpus", type=int, default=-1, help="use slots 0..N-1 on every host")
    p.set_defaults(func=_hostfile)

    p = sub.add_parser("config", help="check a ds_config.json batch rule and explain its ZeRO keys", formatter_class=fmt)
    p.add_argument("config", help="path of ds_config.json")
    p.add_argument("--world-size", "--world_size", type=int, default=8, help="data-parallel ranks")
    p.set_defaults(func=_config)


def _stages(text: str) -> tuple[int, ...]:
    from ._checks import check_stage

    parts = text.split(",")
    if not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise UsageError(f"--stage {text!r} is not a list of stages such as 3 or 1,2; use 0, 1, 2 or 3")
    return tuple(check_stage(int(p)) for p in parts)


def _estimate(args) -> int:
    from ._checks import check_positive_float, parse_count
    from .estimators import format_zero2_estimates, format_zero3_estimates
    from .memory import format_estimate

    psi = parse_count("--params", args.params)
    nodes = parse_count("--nodes", args.nodes)
    gpus = parse_count("--gpus-per-node", args.gpus_per_node)
    if args.device_memory is not None:
        check_positive_float("--device-memory", args.device_memory)
    print(format_estimate(psi, nodes, gpus, _stages(args.stage), args.device_memory))
    if not args.no_deepspeed:
        print("\nDeepSpeed's estimators (deepspeed/runtime/zero/stage_1_and_2.py, stage3.py; GB there = 2^30 bytes):\n")
        print(format_zero2_estimates(psi, gpus, nodes, args.additional_buffer_factor))
        if args.largest_layer_params is not None:
            largest = parse_count("--largest-layer-params", args.largest_layer_params)
            print()
            print(format_zero3_estimates(psi, largest, gpus, nodes, args.additional_buffer_factor))
        else:
            print("(ZeRO-3 estimator: pass --largest-layer-params, e.g. 32M)")
    return 0


def _comm(args) -> int:
    from ._checks import check_positive_float, parse_count, parse_int_list
    from .comm import Link, format_comm

    for name in ("intra_bw", "inter_bw"):
        check_positive_float("--" + name.replace("_", "-"), getattr(args, name))
    for name in ("intra_latency_us", "inter_latency_us"):
        if not getattr(args, name) >= 0:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 0")
    print(format_comm(
        parse_count("--params", args.params), parse_int_list("--nodes", args.nodes),
        parse_count("--gpus-per-node", args.gpus_per_node), _stages(args.stage),
        parse_count("--grad-accum", args.grad_accum),
        Link(args.intra_bw * 1e9, args.intra_latency_us * 1e-6), Link(args.inter_bw * 1e9, args.inter_latency_us * 1e-6),
    ))
    return 0


def _simulate(args) -> int:
    from ._checks import check_positive_float, check_positive_int
    from .launch import SimulationFailed, launch
    from .worker import config_from_args

    nnodes = check_positive_int("--nnodes", args.nnodes)
    nproc = check_positive_int("--nproc-per-node", args.nproc_per_node)
    timeout = check_positive_float("--timeout", args.timeout)
    cfg = config_from_args(args)
    try:
        result = launch(cfg, nnodes, nproc, timeout=timeout)
    except SimulationFailed as exc:
        print(f"clusterlab zero simulate: {exc}")
        return 1
    print(result.summary())
    if args.report:
        from .launch import as_json

        try:
            with open(args.report, "w", encoding="utf-8") as f:
                f.write(as_json(result))
        except OSError as exc:
            raise UsageError(f"cannot write --report {args.report!r}: {exc.strerror}") from None
    return 0 if result.ok else 1


def _hostfile(args) -> int:
    from .hostfile import filter_resources, format_layout, read_hostfile

    pool = read_hostfile(args.hostfile)
    active = filter_resources(pool, args.include, args.exclude, args.num_nodes, args.num_gpus)
    print("hostfile: " + ", ".join(f"{h} slots={n}" for h, n in pool.items()))
    print("active:   " + ", ".join(f"{h}:{','.join(map(str, s)) or '(no slots)'}" for h, s in active.items()))
    print(format_layout(active))
    return 0


def _config(args) -> int:
    from .ds_config import read_config

    print(read_config(args.config, args.world_size))
    return 0
