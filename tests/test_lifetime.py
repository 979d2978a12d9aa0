"""Helper processes die with their parent (taidtron/lifetime.py): a parent killed with SIGKILL leaves no child
behind, whether the child was forked (fork hook), spawned (explicit call) or is the checkpoint writer's Manager."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.support import REPO_ROOT, still_running, subprocess_env

pytestmark = pytest.mark.serial  # timing assertions: run alone, not beside other tests (make test)


def start_parent(tmp_path, body: str) -> tuple[subprocess.Popen, dict]:
    """Run `body` as a script in a fresh Python; it prints one JSON line ({"children": [pids]}) once its helpers
    run. A file, not `-c`: spawned children re-import the parent's __main__."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(body))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"the parent printed nothing:\n{proc.stderr.read()[-3000:]}")
    return proc, json.loads(line)


def kill_parent_and_collect_survivors(proc: subprocess.Popen, children: list[int], wait_s: float = 5.0) -> list[int]:
    assert still_running(children, wait_s=0) == children, "the helpers should be running before the kill"
    proc.kill()
    proc.wait(timeout=30)
    survivors = still_running(children, wait_s=wait_s)
    for pid in survivors:  # do not leave them to the next test
        psutil.Process(pid).kill()
    return survivors


def test_children_forked_after_install_die_when_the_parent_is_killed(tmp_path):
    proc, info = start_parent(
        tmp_path,
        """
        import json, multiprocessing, os, threading, time
        from taidtron import lifetime
        lifetime.install()
        ctx = multiprocessing.get_context("fork")
        from_main = [ctx.Process(target=time.sleep, args=(600,)) for _ in range(2)]
        for p in from_main:
            p.start()
        # forked from another thread: the kernel's parent-death signal would follow that thread, so it polls
        from_thread = ctx.Process(target=time.sleep, args=(600,))
        t = threading.Thread(target=from_thread.start)
        t.start(); t.join()
        print(json.dumps({"children": [p.pid for p in from_main + [from_thread]]}), flush=True)
        time.sleep(600)
    """,
    )
    assert kill_parent_and_collect_survivors(proc, info["children"]) == []


def test_spawned_child_that_calls_die_with_parent_dies_with_it(tmp_path):
    proc, info = start_parent(
        tmp_path,
        """
        import json, multiprocessing, os, time
        from taidtron.lifetime import die_with_parent

        def child(parent):
            die_with_parent(parent)
            time.sleep(600)

        if __name__ == "__main__":
            p = multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(),))
            p.start()
            time.sleep(3)  # let it reach die_with_parent
            print(json.dumps({"children": [p.pid]}), flush=True)
            time.sleep(600)
    """,
    )
    assert kill_parent_and_collect_survivors(proc, info["children"]) == []


def test_a_child_whose_parent_is_already_gone_when_it_asks_exits_at_once(tmp_path):
    proc, info = start_parent(
        tmp_path,
        """
        import json, os, time
        from taidtron.lifetime import die_with_parent
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            time.sleep(2)  # the parent is killed meanwhile: no parent-death signal can come any more
            die_with_parent(parent)
            time.sleep(600)
        print(json.dumps({"children": [pid]}), flush=True)
        time.sleep(600)
    """,
    )
    assert kill_parent_and_collect_survivors(proc, info["children"]) == []


@pytest.mark.parametrize("start_method", ["fork", "spawn"])  # spawn is what runs on GPU machines
def test_checkpoint_writer_ignores_job_signals_but_dies_with_the_trainer(tmp_path, start_method):
    proc, info = start_parent(
        tmp_path,
        f"""
        import json, os, time
        from taidtron.preemption import StopSignal
        import psutil
        from taidtron.overrides import prepare_writer
        if __name__ == "__main__":
            stop = StopSignal()
            prepare_writer("{start_method}")
            children = psutil.Process().children()
            # spawn also starts multiprocessing's resource tracker; the writer is the Manager, running our code
            writer = [c.pid for c in children if "resource_tracker" not in " ".join(c.cmdline())]
            print(json.dumps({{"children": [c.pid for c in children], "writer": writer}}), flush=True)
            time.sleep(600)
    """,
    )
    assert len(info["writer"]) == 1, info
    writer = psutil.Process(info["writer"][0])
    writer.send_signal(signal.SIGTERM)  # what SLURM / torchrun deliver to the whole job
    writer.send_signal(signal.SIGUSR1)
    assert still_running([writer.pid], wait_s=1.0) == [writer.pid], "the writer must survive job-wide stop signals"
    assert kill_parent_and_collect_survivors(proc, info["children"]) == []


def test_data_loader_workers_die_with_their_rank(tmp_path):
    proc, info = start_parent(
        tmp_path,
        f"""
        import json, time
        import psutil
        from taidtron.config import DataConfig
        from taidtron.data import build_data_iterators, load_tokenizer
        cfg = DataConfig(blend=["{REPO_ROOT}/data/smoke/smoke_text_document"], seq_length=32,
                         cache_dir="{tmp_path}/cache")
        train, _ = build_data_iterators(cfg, load_tokenizer("{REPO_ROOT}/data/smoke/tokenizer.model"),
                                        micro_batch_size=2, global_batch_size=4, dp_rank=0, dp_size=1,
                                        train_steps=1000, eval_iters=0, num_workers=2)
        next(train)
        print(json.dumps({{"children": [c.pid for c in psutil.Process().children()]}}), flush=True)
        time.sleep(600)
    """,
    )
    assert len(info["children"]) == 2
    # torch's own watchdog would end them within 5 s; the parent-death signal does it at once
    assert kill_parent_and_collect_survivors(proc, info["children"], wait_s=2.0) == []


def test_tokenization_pool_workers_die_with_the_preprocessing_process(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text((REPO_ROOT / "data" / "smoke" / "corpus.jsonl").read_text() * 20)  # 16 MB: several seconds
    proc, info = start_parent(
        tmp_path,
        f"""
        import json, threading, time
        import psutil
        from taidtron.data import build_indexed_dataset

        def report_workers():
            while len(workers := psutil.Process().children()) < 2:
                time.sleep(0.05)
            print(json.dumps({{"children": [c.pid for c in workers]}}), flush=True)

        threading.Thread(target=report_workers, daemon=True).start()
        build_indexed_dataset(["{corpus}"], "{tmp_path}/out", "{REPO_ROOT}/data/smoke/tokenizer.model", workers=2,
                              progress=False)
        time.sleep(600)
    """,
    )
    assert len(info["children"]) == 2
    assert kill_parent_and_collect_survivors(proc, info["children"]) == []
