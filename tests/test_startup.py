"""Start-up: what a run imports, and that deferring torch's compiler changes nothing a program sees.

Speed itself is measured by ``benchmarks/startup.py`` (never timed here); these tests hold the
mechanism: which modules a process loads, and the compiler's marks once it is loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Every tensordict function dynamo keeps whole in a graph (allow_in_graph) or treats as constant
# (assume_constant_result), by qualified name, and whether the optimizer's wrappers are plain.
MARKS = textwrap.dedent(
    """
    import inspect, json, sys, torch
    def marks():
        import torch._dynamo
        from torch._dynamo import trace_rules
        allowed, constant = set(), set()
        for name, module in list(sys.modules.items()):
            if not name.startswith("tensordict") or module is None:
                continue
            for attr, fn in vars(module).items():
                if not callable(fn):
                    continue
                key = f"{name}.{attr}"
                if id(fn) in trace_rules._allowed_callable_ids:
                    allowed.add(key)
                if getattr(fn, "_dynamo_marked_constant", False):
                    constant.add(key)
        opt = torch.optim.Optimizer
        plain = [n for n in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
                 if getattr(opt, n).__wrapped__.__dict__.get("__dynamo_disable") is getattr(opt, n).__wrapped__]
        return {"allowed": sorted(allowed), "constant": sorted(constant), "plain_disables": plain}
    """
)

TRAIN = textwrap.dedent(
    """
    import tempfile
    from fastpg import Config, Trainer, load_checkpoint, save_checkpoint
    for fused in PATHS:
        with Trainer(Config(num_envs=8, num_steps=32, max_epochs=2, eval_episodes=2, quiet=True, fused=fused)) as tr:
            list(tr.run())
            tr.evaluate(2)
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(tr.state_dict(), d)
                tr.load_state_dict(load_checkpoint(d))
    """
)


def _python(code: str, paths: tuple[str, ...] = ("auto",)) -> dict:
    """Run ``code`` in a fresh process (``PATHS``: the ``fused`` settings ``TRAIN`` runs); its last line is JSON."""
    code = f"PATHS = {paths!r}\n{code}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_run_does_not_import_torchs_compiler():
    """Training on the fused path (the default run), evaluation, a checkpoint saved and loaded:
    ``torch._dynamo`` (about a second of start-up) is never imported. (The generic path imports
    it at its first ``optimizer.step()``: torch's ``Adam.step`` does.)"""
    out = _python(TRAIN + "import json, sys\nprint(json.dumps({'dynamo': 'torch._dynamo' in sys.modules}))")
    assert out == {"dynamo": False}


def test_the_compilers_marks_are_those_of_a_plain_import_once_it_loads():
    """After fastpg's deferred import and a run, importing dynamo makes the marks tensordict asked
    for and restores the optimizer's wrappers: the same as importing dynamo before tensordict."""
    plain = _python(MARKS + "import torch._dynamo, tensordict, fastpg.trainer\nprint(json.dumps(marks()))")
    deferred = _python(MARKS + TRAIN + "print(json.dumps(marks()))", paths=("auto", "off"))  # dynamo loads mid-run
    assert plain["allowed"] and plain["constant"]  # tensordict marks some of its functions
    assert deferred == plain and deferred["plain_disables"] == []


def test_the_optimizers_wrappers_are_plain_only_until_dynamo_loads():
    out = _python(
        MARKS
        + TRAIN
        + textwrap.dedent(
            """
            before = {n: getattr(torch.optim.Optimizer, n).__wrapped__.__dict__.get("__dynamo_disable") is not None
                      for n in ("add_param_group", "zero_grad")}
            import torch._dynamo
            opt = torch.optim.Adam([torch.zeros(2, requires_grad=True)])
            opt.zero_grad()
            real = torch.optim.Optimizer.zero_grad.__wrapped__.__dict__["__dynamo_disable"]
            compiled = torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(3)).tolist()
            print(json.dumps({"before": before, "real": real is not torch.optim.Optimizer.zero_grad.__wrapped__,
                              "compiled": compiled}))
            """
        )
    )
    assert out == {"before": {"add_param_group": True, "zero_grad": True}, "real": True, "compiled": [3.0] * 3}


def test_a_refused_flag_is_said_before_torch_is_imported():
    code = (
        "import sys\nfrom fastpg.cli import main\n"
        "codes = [main(['train', '--num-envs', '0']), main(['train', '--lr', '0.1', '0.01', '--gamma', '2'])]\n"
        "import json; print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))"
    )
    assert _python(code) == {"codes": [2, 2], "torch": False}


PROGRAM = textwrap.dedent(
    """
    import gc, json, sys, tempfile
    import fastpg.artifacts, fastpg.cli, fastpg.population, fastpg.run
    ckpt = tempfile.mkdtemp()
    open(f"{ckpt}/checkpoint.pt", "wb").close()  # evaluate_checkpoint is replaced: it is never read
    seen = {}
    def fake(name):
        def run(*args, **kwargs):  # what the collector is when the run (and its trainer) would start
            seen[name] = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count() > 0,
                          "torch": "torch" in sys.modules}
            return {"exit_code": 0, "env": "CartPole-v1", "eval_return_mean": 0.0, "eval_return_std": 0.0,
                    "eval_episodes": 1}
        return run
    fastpg.run.train = fake("run")
    fastpg.population.train_population = fake("population")
    fastpg.artifacts.evaluate_checkpoint = fake("eval")
    codes = {}
    for name, argv in [("run", ["train", "--quiet"]), ("population", ["train", "--seeds", "2", "--quiet"]),
                       ("eval", ["eval", "--checkpoint", ckpt]), ("refused", ["train", "--num-envs", "0"])]:
        sys.argv = ["fastpg", *argv]
        codes[name] = fastpg.cli.main()  # as the console script calls it: a program
        seen.setdefault(name, {})["after"] = gc.isenabled()
    print(json.dumps({"codes": codes, "seen": seen}))
    """
)


def test_as_a_program_a_command_imports_with_the_collector_paused_and_starts_with_it_running():
    """fastpg train (and eval) run as a program pause the cyclic garbage collector while they
    import, then freeze what they imported and resume the collector before the run begins (so the
    trainer, and the workers it forks, collect as usual); a refused flag leaves it running too."""
    out = _python(PROGRAM)
    assert out["codes"] == {"run": 0, "population": 0, "eval": 0, "refused": 2}
    for name in ("run", "population", "eval"):
        assert out["seen"][name] == {"enabled": True, "frozen": True, "torch": True, "after": True}, name
    assert out["seen"]["refused"] == {"after": True}


def test_main_called_from_python_leaves_the_collector_alone():
    import gc

    from fastpg.cli import main

    frozen = gc.get_freeze_count()
    assert main(["train", "--quiet", "--max-epochs", "1", "--eval-episodes", "0", "--num-envs", "8"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
