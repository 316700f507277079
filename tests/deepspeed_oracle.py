"""Ask the real DeepSpeed: ``python tests/deepspeed_oracle.py CASES.json ANSWERS.json``.

Run by ``tests/test_zero_deepspeed.py`` in a subprocess of its own (importing
DeepSpeed imports torch, logs, and may warn; none of that belongs in the test
process). Every answer comes from DeepSpeed's own code, called as its launcher
calls it:

* hostfiles: ``runner.fetch_hostfile`` on a real file, ``main()``'s check of
  --num_nodes/--num_gpus against --include/--exclude (two lines, copied below),
  ``parse_inclusion_exclusion``, ``apply_num_nodes_and_gpus``, ``encode_world_info``;
  then, per node, ``deepspeed.launcher.launch.main()`` itself, in a forked child, with
  that world info: it starts a real process per rank, which writes down its environment;
* estimators: the six public functions of ``stage_1_and_2.py`` and ``stage3.py``,
  their printed tables captured;
* configs: ``DeepSpeedConfig(dict)`` with ``deepspeed.comm`` answering the world size;
* the ``zero_optimization`` schema: the pydantic models' fields.

An exception is an answer too: ``{"error": "ValueError: ..."}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile

RANK_SCRIPT = """\
import json, os, sys
# every variable launch.py set or changed: the rank's environment minus the one launch.py started with
with open(os.path.join(sys.argv[-1], "base%s.json" % os.environ["CROSS_RANK"])) as f:
    base = json.load(f)
env = {k: v for k, v in os.environ.items() if base.get(k) != v}
with open(os.path.join(sys.argv[-1], "rank%s.json" % os.environ["RANK"]), "w") as f:
    json.dump({"env": env, "argv": sys.argv[1:-1]}, f, sort_keys=True)
"""


def _err(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def _launch_node(world_b64: str, node_rank: int, script: str, out_dir: str) -> int:
    """Run launch.py's main() for one node in a forked child; its ranks write rank*.json into out_dir."""
    pid = os.fork()
    if pid == 0:  # the child: launch.py as `python -m deepspeed.launcher.launch ...` would run it
        code = 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            from deepspeed.launcher import launch

            with open(os.path.join(out_dir, f"base{node_rank}.json"), "w") as f:  # what launch.py starts from
                json.dump(dict(os.environ), f)
            sys.argv = ["launch.py", f"--world_info={world_b64}", f"--node_rank={node_rank}",
                        "--master_addr=127.0.0.1", "--master_port=29500", script, out_dir]
            launch.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            with open(os.path.join(out_dir, f"node{node_rank}.error"), "w") as f:
                f.write(_err(exc)["error"])
            code = 3
        os._exit(code)
    return pid


def hostfile_cases(cases: list[dict]) -> list[dict]:
    from deepspeed.launcher import launch, runner  # noqa: F401 - launch imported once, before the forks

    answers, pending = [], []
    tmp = tempfile.mkdtemp(prefix="ds-oracle-")
    script = os.path.join(tmp, "rank.py")
    with open(script, "w") as f:
        f.write(RANK_SCRIPT)
    for i, case in enumerate(cases):
        path = os.path.join(tmp, f"hostfile{i}")
        if case["text"] is not None:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(case["text"])
        answer: dict = {"id": case["id"]}
        answers.append(answer)
        try:
            pool = runner.fetch_hostfile(path)
            if pool is None:
                answer["local_fallback"] = True  # runner.main(): "proceed with training with local resources only"
                continue
            include, exclude, num_nodes, num_gpus = case["include"], case["exclude"], case["num_nodes"], case["num_gpus"]
            # runner.main(), verbatim in substance:
            if num_nodes >= 0 or num_gpus >= 0:
                if include != "" or exclude != "":
                    raise ValueError("Cannot specify num_nodes/gpus with include/exclude")
            active = runner.parse_inclusion_exclusion(pool, include, exclude)
            active = runner.apply_num_nodes_and_gpus(active, num_nodes, num_gpus)
            answer["world_info"] = {h: list(s) for h, s in active.items()}
            world_b64 = runner.encode_world_info(active)
            answer["world_info_b64"] = world_b64
        except Exception as exc:
            answer.update(_err(exc))
            continue
        out_dir = os.path.join(tmp, f"out{i}")
        os.mkdir(out_dir)
        # runner.main() starts launch.py once per node (node_rank = its index); a world of no host still runs node 0
        for node_rank in range(max(1, len(active))):
            pending.append((answer, out_dir, node_rank, _launch_node(world_b64, node_rank, script, out_dir)))
        while len(pending) >= 16:  # launch.py mostly sleeps (it polls its ranks once a second)
            _reap(pending.pop(0))
    for p in pending:
        _reap(p)
    for answer in answers:
        out_dir = answer.pop("_dir", None)
        if out_dir is None:
            continue
        errors = sorted(f for f in os.listdir(out_dir) if f.endswith(".error"))
        if errors:
            with open(os.path.join(out_dir, errors[0])) as f:
                answer["error"] = "launch.py: " + f.read()
            continue
        ranks = {}
        for name in os.listdir(out_dir):
            if name.startswith("rank") and name.endswith(".json"):
                with open(os.path.join(out_dir, name)) as f:
                    ranks[int(name[4:-5])] = json.load(f)
        answer["ranks"] = [ranks[r] for r in sorted(ranks)]
    return answers


def _reap(item) -> None:
    answer, out_dir, node_rank, pid = item
    _, status = os.waitpid(pid, 0)
    answer["_dir"] = out_dir
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        answer.setdefault("launch_exit", {})[str(node_rank)] = code


def estimator_cases(cases: list[dict]) -> list[dict]:
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    out = []
    for c in cases:
        tp, ll, g, n, f = c["total"], c["largest"], c["gpus"], c["nodes"], c["factor"]
        z2 = [list(stage_1_and_2.estimate_zero2_model_states_mem_needs(tp, g, n, off, f)) for off in (True, False)]
        z3 = [list(stage3.estimate_zero3_model_states_mem_needs(tp, ll, g, n, off, offp, init, f))
              for off, offp, init in _zero3_options()]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            stage_1_and_2.estimate_zero2_model_states_mem_needs_all_cold(tp, g, n, f)
            stage3.estimate_zero3_model_states_mem_needs_all_cold(tp, ll, g, n, f)
        out.append({"zero2": z2, "zero3": z3, "printed": buf.getvalue()})
    return out


def _zero3_options():
    return [(off, offp, init) for off in (True, False) for offp in (True, False) if off or not offp for init in (True, False)]


def config_cases(cases: list[dict]) -> list[dict]:
    import deepspeed.runtime.config as ds_config

    class _Dist:  # deepspeed.comm as an initialised process group of `world` ranks would answer
        world = 1

        @staticmethod
        def get_rank():
            return 0

        @staticmethod
        def get_world_size(*_args):
            return _Dist.world

    ds_config.dist = _Dist
    out = []
    for c in cases:
        _Dist.world = c["world"]
        try:
            cfg = ds_config.DeepSpeedConfig(json.loads(json.dumps(c["config"])))
            out.append({"batch": [cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu,
                                  cfg.gradient_accumulation_steps], "stage": int(cfg.zero_optimization_stage)})
        except Exception as exc:
            out.append(_err(exc))
    return out


def zero_schema() -> dict:
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from deepspeed.runtime.zero.offload_config import DeepSpeedZeroOffloadOptimizerConfig, DeepSpeedZeroOffloadParamConfig

    def fields(model):
        out = {}
        for name, f in model.model_fields.items():
            bounds = [[type(m).__name__, getattr(m, type(m).__name__.lower(), None)] for m in f.metadata]
            out[name] = {"alias": f.alias, "annotation": str(f.annotation), "bounds": bounds}
        return out

    return {"zero": fields(DeepSpeedZeroConfig), "offload_param": fields(DeepSpeedZeroOffloadParamConfig),
            "offload_optimizer": fields(DeepSpeedZeroOffloadOptimizerConfig)}


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        cases = json.load(f)
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    answers = {
        "version": deepspeed.__version__,
        "hostfiles": hostfile_cases(cases["hostfiles"]),
        "estimators": estimator_cases(cases["estimators"]),
        "configs": config_cases(cases["configs"]),
        "schema": zero_schema(),
    }
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(answers, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
